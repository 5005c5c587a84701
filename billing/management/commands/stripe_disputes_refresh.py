from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from billing.stripe_events import disputes_refresh


class Command(BaseCommand):
    help = (
        "Re-read from Stripe every dispute not known to be closed and apply it (credits taken "
        "back or given back), as its webhook events would have."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"{disputes_refresh()} open dispute(s) read from Stripe and applied.")
