"""CSV downloads: streamed row by row, and safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
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


ROWS_PER_CHUNK = 1000  # one write to the socket per thousand rows, not one per row


def csv_response(
    filename: str, header: Sequence[str], rows: Iterable[Sequence[object]]
) -> StreamingHttpResponse:
    """A download of `header` then `rows`, produced while it is sent, a chunk at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def taken() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    def lines() -> Iterable[str]:
        writer.writerow(header)
        for count, row in enumerate(rows, start=1):
            writer.writerow([csv_cell(value) for value in row])
            if count % ROWS_PER_CHUNK == 0:
                yield taken()
        yield taken()

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response
