"""The public price list, in human units ("0.01 credits per 1K tokens")."""

from __future__ import annotations

from decimal import Decimal, localcontext

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from billing.selectors import plan_default
from core.money import decimal_plain, decimal_rounded
from metering import selectors
from metering.units import scale_label, units_plural


def per_units(multiplier: Decimal, scale: int, unit: str, display_unit: str = "") -> str:
    """0.00001 per token at scale 1000 → '0.01 credits per 1K tokens'; at scale 1 → 'per
    token'; with a display unit → 'per GiB-month'."""
    with localcontext() as context:
        context.prec = 200  # a multiplier has up to 40 places: the product must stay exact
        amount = decimal_rounded(multiplier * scale)
    per = display_unit or (unit if scale == 1 else f"{scale_label(scale)} {units_plural(unit)}")
    return f"{amount} credits per {per}"


def price_list(request: HttpRequest) -> HttpResponse:
    rows = []
    for entry in selectors.public_price_list(at=timezone.now()):
        service = entry.service
        tiers = [
            {
                "range": (
                    f"from {tier.min_quantity:,} {units_plural(service.unit_label)}"
                    + (f" to {tier.max_quantity:,}" if tier.max_quantity is not None else " up")
                ),
                "rate": per_units(
                    tier.multiplier,
                    service.display_scale,
                    service.unit_label,
                    service.display_unit,
                ),
                "fixed": decimal_plain(tier.fixed_cost) if tier.fixed_cost else None,
            }
            for tier in entry.tiers
        ]
        rows.append({"service": service, "tiers": tiers, "since": entry.price.valid_from})
    return render(request, "prices.html", {"rows": rows, "default_plan": plan_default()})
