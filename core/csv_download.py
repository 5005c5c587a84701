"""CSV downloads: streamed row by row, and safe to open in a spreadsheet."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal

from django.http import StreamingHttpResponse

from core.money import decimal_plain

# A text cell starting with one of these is a formula to Excel and LibreOffice (CSV injection,
# OWASP): a project named "=HYPERLINK(...)" must stay text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """Amounts without exponents or trailing zeros, times in ISO 8601 UTC, text defused."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return decimal_plain(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_STARTS) else value
    return str(value)


class _Line:
    """What csv.writer writes to: hands each formatted line back instead of buffering it."""

    def write(self, line: str) -> str:
        return line


def csv_response(
    filename: str, header: Sequence[str], rows: Iterable[Sequence[object]]
) -> StreamingHttpResponse:
    """A download of `header` then `rows`, produced while it is sent (a month of jobs may be
    millions of rows)."""
    writer = csv.writer(_Line())

    def lines() -> Iterable[str]:
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow([csv_cell(value) for value in row])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response
