"""Credits are exact decimals. Every amount the ledger stores has at most six decimal places;
parsing refuses anything else rather than rounding it silently."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext

CREDIT_PLACES = 6
CREDIT_QUANTUM = Decimal(1).scaleb(-CREDIT_PLACES)  # 0.000001
CENT = Decimal("0.01")
# NUMERIC(24, 6): balances up to 10^18 credits; one amount at most 10^12, so sums of many
# never reach the column's limit.
MONEY_FIELD = {"max_digits": 24, "decimal_places": CREDIT_PLACES}
MAX_CREDITS = Decimal(10) ** 12


class AmountError(ValueError):
    """An amount that is not a finite decimal with at most six places, or out of range."""


def credits_parse(value: object, *, positive: bool = True) -> Decimal:
    """A credit amount from input: a string, int or Decimal (a float by its shortest repr)."""
    if isinstance(value, bool):
        raise AmountError("Amount must be a number")
    if isinstance(value, float):
        value = repr(value)
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise AmountError("Amount must be a number") from exc
    if not amount.is_finite():
        raise AmountError("Amount must be a finite number")
    if abs(amount) >= MAX_CREDITS:
        raise AmountError("Amount is too large")
    if amount != amount.quantize(CREDIT_QUANTUM, rounding=ROUND_HALF_EVEN):
        raise AmountError(f"Amount can have at most {CREDIT_PLACES} decimal places")
    if positive and amount <= 0:
        raise AmountError("Amount must be greater than 0")
    return amount


# 1,234 or 12,345,678.5: groups of exactly three digits, as pages show amounts.
_GROUPED = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?")


def ungrouped(text: str) -> str:
    """Page forms take an amount as pages show it (1,234.50); other commas are left for the
    parser to refuse ("1,5" is not guessed at). The API takes plain numbers only."""
    text = text.strip()
    return text.replace(",", "") if _GROUPED.fullmatch(text) else text


def credits_quantize(amount: Decimal) -> Decimal:
    """The one rounding rule for computed amounts (costs, charges): half-even to 0.000001."""
    with localcontext() as context:
        context.prec = _digits_for(amount)  # a huge computed cost must round, not raise
        return amount.quantize(CREDIT_QUANTUM, rounding=ROUND_HALF_EVEN)


def credits_format_cents(amount: Decimal) -> str:
    """Two-decimal string, as the accounting-service prints balances ("400.00")."""
    with localcontext() as context:
        context.prec = _digits_for(amount)
        return str(amount.quantize(CENT, rounding=ROUND_HALF_EVEN))


def _digits_for(amount: Decimal) -> int:
    """Enough precision to quantize `amount` to a millionth exactly, however large it is."""
    return max(200, amount.adjusted() + CREDIT_PLACES + 2) if amount.is_finite() else 200


def decimal_plain(value: Decimal) -> str:
    """A decimal as people write it: no exponent, no trailing zeros (0E-12 → 0, 0.0100 →
    0.01, 1E+2 → 100)."""
    with localcontext() as context:
        context.prec = 200
        text = f"{value.normalize():f}"
    return "0" if text == "-0" else text


def decimal_rounded(value: Decimal, significant: int = 6) -> str:
    """decimal_plain to at most `significant` significant digits, with "≈ " when that rounded
    it: for prices in prose, not for amounts charged."""
    with localcontext() as context:
        context.prec = 200
        digits = len(value.normalize().as_tuple().digits)
    if digits <= significant:
        return decimal_plain(value)
    with localcontext() as context:
        context.prec = significant
        return "≈ " + decimal_plain(+value)


def credits_display(amount: Decimal) -> str:
    """Credits as pages and mails show them: exact (two decimals, or as many as the amount has,
    up to six), thousands grouped: 1,234.50, 0.081, 0.000123. Rounding to cents would make the
    parts of a page disagree with its totals."""
    with localcontext() as context:
        context.prec = _digits_for(amount)
        exact = amount == amount.quantize(CENT)
        text = str(amount.quantize(CENT)) if exact else decimal_plain(amount)
    whole, _, fraction = text.partition(".")
    sign, digits = ("-", whole[1:]) if whole.startswith("-") else ("", whole)
    if int(digits) == 0 and not fraction.strip("0"):
        sign = ""  # -0 is 0
    return f"{sign}{int(digits):,}" + (f".{fraction}" if fraction else "")
