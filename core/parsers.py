from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.conf import settings
from rest_framework import exceptions
from rest_framework.parsers import JSONParser


class DecimalJSONParser(JSONParser):
    """JSON numbers with a fraction become Decimal, never float; any unreadable body (bad
    syntax, bad encoding, nesting deep enough to exhaust the parser) is a 4xx parse error."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return json.loads(stream.read().decode(encoding), parse_float=Decimal)
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise exceptions.ParseError(f"JSON parse error - {reason}") from exc
