from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from billing.auto_recharge import auto_recharge_sweep


class Command(BaseCommand):
    help = (
        "Start auto-recharges a debit missed and resend payments a killed task never sent "
        "(what the beat schedule runs every minute)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"{auto_recharge_sweep()} auto-recharge payment(s) started or resent")
