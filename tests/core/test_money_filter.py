"""`{{ amount|credits }}`: one way to show credits on every page, exact."""

from decimal import Decimal

import pytest
from django.template import Context, Template

from core.money import ungrouped


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("1234.5"), "1,234.50"),
        (Decimal("0.081000"), "0.081"),  # not 0.08: the parts of a page add up to its totals
        (Decimal("49.909"), "49.909"),
        (Decimal("0.000123"), "0.000123"),
        (Decimal("-2"), "-2.00"),
        (Decimal("-1234567.123456"), "-1,234,567.123456"),
        (Decimal("0E-6"), "0.00"),
        (Decimal("1E+3"), "1,000.00"),
        ("12.5", "12.50"),
        (Decimal("-0"), "0.00"),
        (Decimal("-0.000001"), "-0.000001"),
        (None, ""),
        ("not a number", ""),
        (Decimal("NaN"), ""),
        (Decimal("Infinity"), ""),
        (Decimal("-Infinity"), ""),
        (Decimal("sNaN"), ""),
    ],
)
def test_credits_are_shown_exactly_with_thousands_separators(amount, text):
    rendered = Template("{% load money %}{{ amount|credits }}").render(Context({"amount": amount}))
    assert rendered == text


@pytest.mark.parametrize(
    ("typed", "read"),
    [("1,234.50", "1234.50"), (" 12,345,678 ", "12345678"), ("-1,000.5", "-1000.5"),
     ("1234", "1234"), ("1,5", "1,5"), ("1,23,456", "1,23,456"), ("1,000,00", "1,000,00"),
     ("", "")],
)  # fmt: skip
def test_forms_take_amounts_grouped_as_pages_show_them(typed, read):
    assert ungrouped(typed) == read
