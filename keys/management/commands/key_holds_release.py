from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from core.cli import moment
from keys.caps import key_jobs_release


class Command(BaseCommand):
    help = "Give back the credit-cap holds of cancelled or expired authorizations (every minute)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--now", type=moment, help="ISO moment recorded as the release time")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"{key_jobs_release(now=options['now'])} hold(s) released")
