from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from core.cli import moment
from keys.services import keys_expire


class Command(BaseCommand):
    help = "Mark API keys past their expiry (beat: every minute)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--now", type=moment, help="ISO moment to expire up to")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"{keys_expire(now=options['now'])} key(s) marked expired")
