"""`{{ amount|credits }}`: credits as every page shows them (core.money.credits_display)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django import template

from core.money import credits_display

register = template.Library()


@register.filter
def credits(value: object) -> str:
    """Exact, thousands grouped: 1,234.50, 0.081; nothing for what is not an amount."""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return ""
    return credits_display(amount) if amount.is_finite() else ""
