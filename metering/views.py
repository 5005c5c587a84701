"""The public price list, in human units ("0.01 credits per 1K tokens")."""

from __future__ import annotations

from decimal import Decimal

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from metering import selectors


def scale_label(scale: int) -> str:
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "K")):
        if scale >= size and scale % size == 0:
            return f"{scale // size}{suffix}"
    return str(scale)


def per_units(multiplier: Decimal, scale: int, unit: str) -> str:
    """0.00001 per token at scale 1000 → '0.01 credits per 1K tokens'."""
    amount = (multiplier * scale).normalize()
    text = f"{amount:f}"
    units = f"{unit}s" if not unit.endswith("s") else unit
    return f"{text} credits per {scale_label(scale) + ' ' if scale != 1 else ''}{units}"


def price_list(request: HttpRequest) -> HttpResponse:
    rows = []
    for entry in selectors.public_price_list(at=timezone.now()):
        service = entry.service
        tiers = [
            {
                "range": (
                    f"from {tier.min_quantity:,} {service.unit_label}s"
                    + (f" to {tier.max_quantity:,}" if tier.max_quantity is not None else " up")
                ),
                "rate": per_units(tier.multiplier, service.display_scale, service.unit_label),
                "fixed": tier.fixed_cost.normalize() if tier.fixed_cost else None,
            }
            for tier in entry.tiers
        ]
        rows.append({"service": service, "tiers": tiers, "since": entry.price.valid_from})
    return render(request, "prices.html", {"rows": rows})
