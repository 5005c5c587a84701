from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from metering import services
from metering.constants import LEGACY_SUBTYPES, SUBTYPES
from metering.cost import Tier
from metering.models import Service, ServiceType

SINCE = datetime.fromisoformat("2024-01-01T00:00:00+00:00")
# The accounting-service's test prices, and a linear price for everything else.
GIB_MONTH = 1024**3 * 30 * 86400  # byte-seconds
DEMO_PRICES: dict[tuple[str, str], tuple[str, int, str, list[Tier]]] = {
    ("oneshot", "ml-llm"): ("token", 1000, "", [Tier(0, None, Decimal(0), Decimal("0.00001"))]),
    ("longrun", "single-cell-sim"): (
        "instance-second",
        3600,
        "instance-hour",
        [Tier(0, None, Decimal("1.5"), Decimal("0.01"))],
    ),
    ("storage", "storage"): (
        "byte-second",
        GIB_MONTH,
        "GiB-month",
        [Tier(0, None, Decimal(0), Decimal("0.023") / GIB_MONTH)],
    ),
}
# Everything else, by type: a call, or an instance-hour (billed by the second).
DEMO_DEFAULTS: dict[str, tuple[str, int, str, list[Tier]]] = {
    ServiceType.ONESHOT: ("call", 1, "", [Tier(0, None, Decimal(0), Decimal("0.01"))]),
    ServiceType.LONGRUN: (
        "instance-second",
        3600,
        "instance-hour",
        [Tier(0, None, Decimal(0), Decimal("0.0001"))],
    ),
}
ACRONYMS = {"ml": "ML", "llm": "LLM", "mcp": "MCP", "em": "EM", "rag": "RAG"}


def demo_name(slug: str) -> str:
    """ml-llm → ML LLM, em-synapse-mapping → EM synapse mapping."""
    words = [ACRONYMS.get(word, word) for word in slug.split("-")]
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


class Command(BaseCommand):
    help = "Create a service for every accounting-service subtype, with demo prices (idempotent)."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        for slug in SUBTYPES:
            kind = (
                ServiceType.STORAGE
                if slug == "storage"
                else ServiceType.ONESHOT
                if slug.startswith(("ml-", "mcp"))
                else ServiceType.LONGRUN
            )
            unit, scale, display_unit, tiers = DEMO_PRICES.get((kind, slug)) or DEMO_DEFAULTS[kind]
            service, created = Service.objects.get_or_create(
                type=kind,
                slug=slug,
                defaults={
                    "name": demo_name(slug),
                    "unit_label": unit,
                    "display_scale": scale,
                    "display_unit": display_unit,
                    "is_legacy": slug in LEGACY_SUBTYPES,
                },
            )
            if created and not service.is_legacy:
                services.price_create(service=service, tiers=tiers, valid_from=SINCE)
        self.stdout.write(f"  {len(SUBTYPES)} services with demo prices (see /prices/)")
