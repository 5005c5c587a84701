from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from core.cli import moment
from metering.reservations import reservations_expire


class Command(BaseCommand):
    help = "Release unused reservations past their TTL (the beat schedule runs it every minute)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--now", type=moment, help="ISO moment to expire up to (a replay)")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"{reservations_expire(now=options['now'])} reservation(s) expired")
