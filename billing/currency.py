"""Money paid through Stripe: amounts in a currency, integer minor units, and the credits they buy.

Stripe counts in minor units (cents); most currencies have two decimals, a few none or three.
Every conversion between an amount, its minor units and its credits happens here.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.conf import settings

from core.money import AmountError, credits_quantize

# Stripe's zero-decimal and three-decimal currencies; every other one has two decimals.
_ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
_THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


def currency_places(currency: str) -> int:
    code = currency.lower()
    if code in _ZERO_DECIMAL:
        return 0
    return 3 if code in _THREE_DECIMAL else 2


def amount_parse(value: object, *, currency: str) -> Decimal:
    """An amount of `currency` from input; refuses non-numbers and more decimals than the
    currency has (never rounds). Range checks are the caller's (they depend on settings)."""
    if isinstance(value, bool | float):
        raise AmountError("Enter an amount such as 25 or 25.50")
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise AmountError("Enter an amount such as 25 or 25.50") from exc
    if not amount.is_finite():
        raise AmountError("Enter an amount such as 25 or 25.50")
    if amount.adjusted() >= 15:  # far above any limit; quantizing it would overflow
        raise AmountError("Amount is too large")
    places = currency_places(currency)
    if amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise AmountError(
            f"{currency.upper()} amounts have at most {places} decimal places"
            if places
            else f"{currency.upper()} amounts are whole numbers"
        )
    return amount


def to_minor(amount: Decimal, *, currency: str) -> int:
    """Exact: an amount with more decimals than the currency has is an error, not rounded."""
    minor = amount.scaleb(currency_places(currency))
    if minor != minor.to_integral_value():
        raise AmountError(f"{amount} {currency.upper()} is not a whole number of minor units")
    return int(minor)


def from_minor(minor: int, *, currency: str) -> Decimal:
    places = currency_places(currency)
    return Decimal(minor).scaleb(-places).quantize(Decimal(1).scaleb(-places))


def credits_for_minor(minor: int, *, currency: str) -> Decimal:
    """The credits `minor` units buy: CREDITS_PER_CURRENCY_UNIT per unit, rounded half-even to
    0.000001 credit (monotonic, so part of a payment never buys more than all of it)."""
    amount = from_minor(minor, currency=currency)
    return credits_quantize(amount * settings.CREDITS_PER_CURRENCY_UNIT)


def amount_format(minor: int, *, currency: str) -> str:
    """ "25.00 USD" """
    return f"{from_minor(minor, currency=currency)} {currency.upper()}"
