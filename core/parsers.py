from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from django.conf import settings
from rest_framework import exceptions
from rest_framework.parsers import JSONParser

# A \uD800-\uDFFF escape: the only way a JSON text yields a string that is not valid Unicode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class DecimalJSONParser(JSONParser):
    """JSON numbers with a fraction become Decimal, never float; any unreadable body (bad
    syntax, bad encoding, nesting deep enough to exhaust the parser) is a 4xx parse error."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding)
            data = json.loads(text, parse_float=Decimal)
            self.check(text, data)
            return data
        except (ValueError, LookupError, RecursionError) as exc:  # LookupError: charset=base64
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise exceptions.ParseError(f"JSON parse error - {reason}") from exc

    def check(self, text: str, data: Any) -> None:
        """Raise ValueError for a body this surface refuses whole."""


class UnicodeJSONParser(DecimalJSONParser):
    """Also refuses a lone surrogate (`"\\ud800"`) anywhere: the accounting surface echoes
    input in its 422 details, and no answer or database can hold such a string."""

    def check(self, text: str, data: Any) -> None:
        lone_surrogate_check(text, data)


def lone_surrogate_check(text: str, data: Any) -> None:
    """UnicodeEncodeError (a ValueError) when the JSON `text` parsed into `data` holds a lone
    surrogate: a pair is fine; a lone half cannot be encoded."""
    if _SURROGATE_ESCAPE.search(text):
        json.dumps(data, ensure_ascii=False, default=str).encode()
