"""Reads of services, prices and discounts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import F, Q, QuerySet
from django.utils import timezone

from accounts.models import Lab, Project
from metering.cost import Tier, usage_cost
from metering.errors import MissingPriceError
from metering.models import Discount, Price, Service

ZERO = Decimal(0)


def _valid_at(at: datetime) -> Q:
    return Q(valid_from__lte=at) & (Q(valid_to__isnull=True) | Q(valid_to__gt=at))


def price_current(*, service: Service, lab: Lab | None, at: datetime) -> Price:
    """The lab's own price if one is valid at `at`, else the default price; among several,
    the latest `valid_from`, then the newest. MissingPriceError when there is none."""
    scope = Q(lab__isnull=True) | (Q(lab=lab) if lab is not None else Q(pk__in=[]))
    price = (
        Price.objects.filter(_valid_at(at), scope, service=service)
        .prefetch_related("tiers")
        .order_by(F("lab_id").asc(nulls_last=True), "-valid_from", "-id")  # the lab's own first
        .first()
    )
    if price is not None:
        return price
    lab_part = lab.uuid if lab is not None else None
    raise MissingPriceError(f"Missing price for: {lab_part} {service.type} {service.slug} {at}")


def price_tiers(price: Price) -> list[Tier]:
    return [
        Tier(t.min_quantity, t.max_quantity, t.fixed_cost, t.multiplier) for t in price.tiers.all()
    ]


def discount_current(*, lab: Lab, at: datetime) -> Discount | None:
    return Discount.objects.filter(_valid_at(at), lab=lab).order_by("-valid_from", "-id").first()


def discount_rate(*, lab: Lab, at: datetime) -> Decimal:
    discount = discount_current(lab=lab, at=at)
    return discount.discount if discount is not None else ZERO


@dataclass(frozen=True)
class PublicPrice:
    service: Service
    price: Price
    tiers: list[Tier]


def public_price_list(*, at: datetime) -> list[PublicPrice]:
    """Today's default price of every active service, for the public price page."""
    rows = []
    services: QuerySet[Service] = Service.objects.filter(is_active=True, is_legacy=False)
    for service in services.order_by("type", "slug"):
        try:
            price = price_current(service=service, lab=None, at=at)
        except MissingPriceError:
            continue
        rows.append(PublicPrice(service=service, price=price, tiers=price_tiers(price)))
    return rows


def service_priced(*, kind: str, subtype: str, lab: Lab, at: datetime) -> Service:
    """The service sold as (kind, subtype); MissingPriceError, in the reference's words, when
    there is no such service (and so no price for it)."""
    service = Service.objects.filter(type=kind, slug=subtype).first()
    if service is None:
        raise MissingPriceError(f"Missing price for: {lab.uuid} {kind} {subtype} {at}")
    return service


def cost_estimate(*, project: Project, kind: str, subtype: str, quantity: int) -> Decimal:
    """What `quantity` units would cost the project now: its lab's price and discount."""
    now = timezone.now()
    service = service_priced(kind=kind, subtype=subtype, lab=project.lab, at=now)
    price = price_current(service=service, lab=project.lab, at=now)
    return usage_cost(price_tiers(price), 0, quantity, discount_rate(lab=project.lab, at=now))


def discount_rates(*, lab_ids: list[int], at: datetime) -> dict[int, Decimal]:
    """The discount of each lab at `at` (labs without one get 0), in one query."""
    rates = dict.fromkeys(lab_ids, ZERO)
    current = (
        Discount.objects.filter(_valid_at(at), lab_id__in=lab_ids)
        .order_by("lab_id", "-valid_from", "-id")
        .distinct("lab_id")
        .values_list("lab_id", "discount")
    )
    rates.update(current)
    return rates
