"""The public price list, in human units ("0.01 credits per 1K tokens")."""

from __future__ import annotations

from decimal import Decimal

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from core.money import decimal_plain, decimal_rounded
from metering import selectors


def scale_label(scale: int) -> str:
    """1000 → 1K, 2000000 → 2M, 3600 → 3,600."""
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "K")):
        if scale >= size and scale % size == 0:
            return f"{scale // size:,}{suffix}"
    return f"{scale:,}"


def units_plural(unit: str) -> str:
    return unit if unit.endswith("s") else f"{unit}s"


def per_units(multiplier: Decimal, scale: int, unit: str, display_unit: str = "") -> str:
    """0.00001 per token at scale 1000 → '0.01 credits per 1K tokens'; at scale 1 → 'per
    token'; with a display unit → 'per GiB-month'."""
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
    return render(request, "prices.html", {"rows": rows})
