"""Currency amounts, minor units and the credits they buy: exact, rounded in one place."""

from decimal import Decimal

import pytest

from billing.currency import amount_format, amount_parse, credits_for_minor, from_minor, to_minor
from core.money import AmountError


@pytest.mark.parametrize(
    ("currency", "text", "minor"),
    [("usd", "25", 2500), ("usd", "0.01", 1), ("eur", "19.99", 1999), ("jpy", "1500", 1500),
     ("kwd", "1.23", 1230), ("kwd", "1.230", 1230), ("isk", "500", 50000)],
)  # fmt: skip
def test_amounts_convert_to_minor_units_and_back_exactly(currency, text, minor):
    amount = amount_parse(text, currency=currency)
    assert to_minor(amount, currency=currency) == minor
    assert from_minor(minor, currency=currency) == amount


@pytest.mark.parametrize(
    ("currency", "text"),
    [("usd", "1.001"), ("jpy", "10.5"), ("usd", "ten"), ("usd", ""), ("usd", "nan"),
     ("usd", "1e99"), ("kwd", "1.234"), ("isk", "40.10")],
)  # fmt: skip
def test_it_refuses_what_is_not_an_exact_amount_of_the_currency(currency, text):
    with pytest.raises(AmountError):
        amount_parse(text, currency=currency)


def test_floats_are_refused():
    with pytest.raises(AmountError):
        amount_parse(25.5, currency="usd")


def test_credits_round_half_even_to_a_millionth(settings):
    settings.CREDITS_PER_CURRENCY_UNIT = Decimal("0.0000005")
    assert credits_for_minor(100, currency="usd") == Decimal("0")  # 0.0000005 -> even 0
    assert credits_for_minor(300, currency="usd") == Decimal("0.000002")  # 0.0000015 -> 2
    settings.CREDITS_PER_CURRENCY_UNIT = Decimal(3)
    assert credits_for_minor(1999, currency="usd") == Decimal("59.97")


def test_part_of_a_payment_never_buys_more_than_all_of_it(settings):
    settings.CREDITS_PER_CURRENCY_UNIT = Decimal("0.333333")
    total = credits_for_minor(1001, currency="usd")
    parts = [credits_for_minor(m, currency="usd") for m in range(0, 1002)]
    assert parts == sorted(parts) and parts[-1] == total


@pytest.mark.parametrize(
    ("currency", "minor", "text"),
    [("usd", 125000, "1,250.00 USD"), ("usd", 5, "0.05 USD"), ("jpy", 1500000, "1,500,000 JPY"),
     ("kwd", 1234567, "1,234.567 KWD")],
)  # fmt: skip
def test_amounts_show_their_currencys_places_with_thousands_grouped(currency, minor, text):
    assert amount_format(minor, currency=currency) == text
