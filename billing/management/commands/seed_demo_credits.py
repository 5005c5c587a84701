from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Lab
from billing import plans, services
from billing.models import GrantCategory, GrantSource, Plan, PlanPeriod, PlanRollover

DEMO_EMAIL = "demo@example.com"


class Command(BaseCommand):
    help = (
        "Give the demo user's lab welcome credits and a project budget, and make a default "
        "plan that every new signup starts on (idempotent)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="run even with DEBUG off")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG and not options["force"]:
            raise CommandError("Demo data is for development; pass --force to load it anyway.")
        lab = Lab.objects.filter(personal_for__email=DEMO_EMAIL).first()
        if lab is None:
            raise CommandError(f"Run seed_demo first: no lab for {DEMO_EMAIL}.")
        services.lab_top_up(
            lab=lab,
            amount="100",
            category=GrantCategory.PROMOTIONAL,
            source=GrantSource.OPERATOR,
            reason="demo welcome credits",
            idempotency_key=f"demo:welcome:{lab.uuid}",
        )
        services.budget_assign(
            lab=lab,
            project=lab.projects.get(name="Default"),
            amount="25",
            idempotency_key=f"demo:assign:{lab.uuid}",
        )
        self.stdout.write(f"  demo lab '{lab.name}': 100 credits, 25 assigned to Default")
        plan, _ = Plan.objects.get_or_create(
            slug="starter",
            defaults={
                "name": "Starter",
                "description": "Free credits every month to try the services.",
                "credits": Decimal("10"),
                "period": PlanPeriod.MONTHLY,
                "rollover": PlanRollover.CARRY,
                "rollover_max": Decimal("10"),
                "is_default": not Plan.objects.filter(is_default=True).exists(),
            },
        )
        if not lab.plan_subscriptions.filter(ended_at__isnull=True).exists():
            plans.plan_subscribe(lab=lab, plan=plan)
        default = "; new signups start on it" if plan.is_default else ""
        self.stdout.write(f"  plan '{plan.name}': {plan.summary}{default}")
