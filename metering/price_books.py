"""Prices and discounts of many events at once: loaded in a few queries, then picked per event
in memory by the rules of metering/selectors.py (price_current, discount_current)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from django.db.models import Q

from core.money import MAX_CREDITS
from metering.cost import Tier, tiered_cost
from metering.models import Discount, Price

ZERO = Decimal(0)


def _valid(row: Price | Discount, at: datetime) -> bool:
    return row.valid_from <= at and (row.valid_to is None or row.valid_to > at)


class PriceBook:
    """The prices of some services for some labs, loaded in one query (plus their tiers), then
    picked per event in memory by the rule of selectors.price_current: the lab's own price valid
    at the moment, else the default one; among several, the latest `valid_from`, then newest."""

    def __init__(self, service_ids: Iterable[int], lab_ids: Iterable[int]) -> None:
        labs = set(lab_ids)
        prices = (
            Price.objects.filter(service_id__in=set(service_ids))
            .filter(Q(lab__isnull=True) | Q(lab_id__in=labs))
            .prefetch_related("tiers")
            .order_by("-valid_from", "-id")
        )
        self._versions: dict[tuple[int, int | None], list[Price]] = defaultdict(list)
        self._tiers: dict[int, list[Tier]] = {}
        self._bound: dict[int, tuple[Decimal, Decimal]] = {}
        for price in prices:
            self._versions[(price.service_id, price.lab_id)].append(price)
            tiers = [
                Tier(t.min_quantity, t.max_quantity, t.fixed_cost, t.multiplier)
                for t in price.tiers.all()
            ]
            self._tiers[price.pk] = tiers
            self._bound[price.pk] = (
                sum((t.fixed_cost for t in tiers), ZERO),
                max((t.multiplier for t in tiers), default=ZERO),
            )

    def at(self, service_id: int, lab_id: int, moment: datetime) -> Price | None:
        for scope in (lab_id, None):
            for price in self._versions.get((service_id, scope), ()):
                if _valid(price, moment):
                    return price
        return None

    def tiers(self, price: Price) -> list[Tier]:
        return self._tiers[price.pk]

    def cost_fits(self, price: Price, units: int) -> bool:
        """Whether `units` cost less than MAX_CREDITS before any discount: a cheap upper bound
        first (every fixed cost plus every unit at the highest rate), the exact cost if not."""
        fixed, rate = self._bound[price.pk]
        if fixed + rate * units < MAX_CREDITS:
            return True
        return tiered_cost(self._tiers[price.pk], 0, units) < MAX_CREDITS


class DiscountBook:
    """The discounts of some labs, in one query; picked per moment like discount_current."""

    def __init__(self, lab_ids: Iterable[int]) -> None:
        self._versions: dict[int, list[Discount]] = defaultdict(list)
        rows = Discount.objects.filter(lab_id__in=set(lab_ids)).order_by("-valid_from", "-id")
        for discount in rows:
            self._versions[discount.lab_id].append(discount)

    def at(self, lab_id: int, moment: datetime) -> Decimal:
        for discount in self._versions.get(lab_id, ()):
            if _valid(discount, moment):
                return discount.discount
        return ZERO
