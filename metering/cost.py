"""Cost of usage under tiered prices, exactly as the accounting-service computes it (its
section 4): a tier's fixed cost is paid once, when usage first goes above the tier's minimum;
the discount applies to the total. Full precision here; charges are quantized by the caller
with core.money.credits_quantize."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise


@dataclass(frozen=True)
class Tier:
    min_quantity: int
    max_quantity: int | None
    fixed_cost: Decimal
    multiplier: Decimal


class TierError(ValueError):
    """Tiers that do not describe one contiguous price from zero to infinity."""


def tiers_validate(tiers: Sequence[Tier]) -> list[Tier]:
    """Sorted tiers, or TierError with the accounting-service's messages."""
    if not tiers:
        raise TierError("At least one tier is required")
    ordered = sorted(tiers, key=lambda tier: tier.min_quantity)
    if ordered[0].min_quantity != 0:
        raise TierError("First tier must start at min_quantity=0")
    for tier in ordered[:-1]:
        if tier.max_quantity is None:
            raise TierError("Only the last tier can have max_quantity=None")
    for tier in ordered:
        if tier.fixed_cost < 0 or tier.multiplier < 0:
            raise TierError("Tier costs cannot be negative")
        if tier.max_quantity is not None and tier.max_quantity <= tier.min_quantity:
            raise TierError("A tier's max_quantity must be greater than its min_quantity")
    for before, after in pairwise(ordered):
        if after.min_quantity != before.max_quantity:
            raise TierError(
                "Tiers must be contiguous: each min_quantity must equal the previous max_quantity"
            )
    return ordered


def tiered_cost(tiers: Sequence[Tier], start: int, end: int) -> Decimal:
    """Cost of the usage between cumulative quantities `start` and `end` (0 if end <= start)."""
    cost = Decimal(0)
    for tier in sorted(tiers, key=lambda t: t.min_quantity):
        if end <= tier.min_quantity:
            break
        low = max(start, tier.min_quantity)
        high = end if tier.max_quantity is None else min(end, tier.max_quantity)
        if low >= high:
            continue
        if start <= tier.min_quantity:
            cost += tier.fixed_cost  # entering this tier for the first time
        cost += tier.multiplier * (high - low)
    return cost


def discounted(cost: Decimal, discount: Decimal) -> Decimal:
    return cost * (1 - discount)


def usage_cost(tiers: Sequence[Tier], start: int, end: int, discount: Decimal) -> Decimal:
    return discounted(tiered_cost(tiers, start, end), discount)


def storage_cost(
    tiers: Sequence[Tier], size_bytes: int, seconds: int, discount: Decimal
) -> Decimal:
    """Storage: the first tier's multiplier per byte-second; fixed costs do not apply."""
    first = sorted(tiers, key=lambda t: t.min_quantity)[0]
    return discounted(first.multiplier * size_bytes * seconds, discount)
