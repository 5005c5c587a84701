"""Money paid through Stripe: amounts in a currency, integer minor units, and the credits they buy.

Stripe counts in minor units (cents); most currencies have two decimals, a few none or three.
Every conversion between an amount, its minor units and its credits happens here.

Stripe charges fewer decimals than some currencies have (its "special cases"): the three-decimal
ones take only amounts whose last minor digit is 0 (KWD 5.120, not 5.125), and ISK, two-decimal
in the API (100 minor units a króna), takes whole krónur only. `amount_parse` refuses what
Stripe would refuse.
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
# Two-decimal in Stripe's API, but charged in whole units only.
_WHOLE_UNITS = frozenset(["isk"])


def currency_places(currency: str) -> int:
    code = currency.lower()
    if code in _ZERO_DECIMAL:
        return 0
    return 3 if code in _THREE_DECIMAL else 2


def chargeable_places(currency: str) -> int:
    """The decimal places of an amount Stripe charges: none for zero-decimal currencies and
    ISK, two for the three-decimal ones (their last minor digit must be 0) and the others."""
    code = currency.lower()
    return 0 if code in _ZERO_DECIMAL or code in _WHOLE_UNITS else 2


def amount_parse(value: object, *, currency: str) -> Decimal:
    """An amount of `currency` from input; refuses non-numbers and more decimals than Stripe
    charges in the currency (never rounds). Range checks are the caller's (they depend on
    settings)."""
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
    places = chargeable_places(currency)
    if amount != amount.quantize(Decimal(1).scaleb(-places)):
        code = currency.upper()
        if places == 0:
            raise AmountError(f"{code} amounts are whole numbers")
        if currency_places(currency) > places:
            raise AmountError(
                f"{code} amounts have at most {places} decimal places (Stripe charges {code} "
                "in steps of 0.010)"
            )
        raise AmountError(f"{code} amounts have at most {places} decimal places")
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


def credits_share(credits: Decimal, part_minor: int, total_minor: int) -> Decimal:
    """The credits `part_minor` of a payment of `total_minor` bought, when the whole bought
    `credits`: the same share, whatever the credit rate is today, and never more than all."""
    if part_minor >= total_minor:
        return credits
    return min(credits, credits_quantize(credits * part_minor / total_minor))


def amount_format(minor: int, *, currency: str) -> str:
    """ "25.00 USD", "1,250.00 USD": the currency's own decimal places, thousands grouped."""
    return f"{from_minor(minor, currency=currency):,} {currency.upper()}"
