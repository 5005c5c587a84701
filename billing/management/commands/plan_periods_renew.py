from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from billing.plans import plan_periods_renew
from core.cli import moment


class Command(BaseCommand):
    help = "Renew every plan whose period has ended (what the beat schedule runs every minute)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--now", type=moment, help="ISO moment to renew up to")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"{plan_periods_renew(now=options['now'])} plan period(s) renewed")
