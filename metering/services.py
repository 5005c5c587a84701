"""Writes for services, prices and discounts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from django.db import transaction

from accounts.models import Lab
from metering.cost import Tier, TierError, tiers_validate
from metering.errors import PriceError
from metering.models import Discount, Price, PriceTier, Service


@transaction.atomic
def price_create(
    *,
    service: Service,
    tiers: Sequence[Tier],
    valid_from: datetime,
    valid_to: datetime | None = None,
    lab: Lab | None = None,
) -> Price:
    """A new price version. Prices are append-only: a change is a new version."""
    if service.is_legacy:
        raise PriceError(f"subtype `{service.slug}` is legacy")
    if valid_to is not None and valid_to <= valid_from:
        raise PriceError("valid_to must be greater than valid_from")
    try:
        ordered = tiers_validate(tiers)
    except TierError as exc:
        raise PriceError(str(exc)) from exc
    price = Price.objects.create(service=service, lab=lab, valid_from=valid_from, valid_to=valid_to)
    PriceTier.objects.bulk_create(
        PriceTier(
            price=price,
            min_quantity=t.min_quantity,
            max_quantity=t.max_quantity,
            fixed_cost=t.fixed_cost,
            multiplier=t.multiplier,
        )
        for t in ordered
    )
    return price


@transaction.atomic
def discount_create(
    *, lab: Lab, discount: Decimal, valid_from: datetime, valid_to: datetime | None = None
) -> Discount:
    if not 0 <= discount <= 1:
        raise PriceError("discount must be between 0 and 1")
    if valid_to is not None and valid_to <= valid_from:
        raise PriceError("valid_to must be greater than valid_from")
    return Discount.objects.create(
        lab=lab, discount=discount, valid_from=valid_from, valid_to=valid_to
    )
