from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from billing.sweeps import grants_expire
from core.cli import moment


class Command(BaseCommand):
    help = "Expire every grant past its expiry (what the beat schedule runs every minute)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--now", type=moment, help="ISO moment to expire up to")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"{grants_expire(now=options['now'])} grant(s) expired")
