"""`{{ amount|credits }}`: credits as every page shows them."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django import template

from core.money import credits_display

register = template.Library()


@register.filter
def credits(value: object) -> str:
    """Exact, as the ledger holds it (two decimals, or up to six where the amount has them),
    with thousands separators: 1,234.50, 0.081, 0.000123. Rounding to cents would make the
    parts of a page disagree with its totals."""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return ""
    whole, _, fraction = credits_display(amount).partition(".")
    sign, digits = ("-", whole[1:]) if whole.startswith("-") else ("", whole)
    grouped = f"{sign}{int(digits):,}"
    return f"{grouped}.{fraction}" if fraction else grouped
