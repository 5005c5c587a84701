from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from core.cli import moment
from metering.charging import storage_jobs_charge


class Command(BaseCommand):
    help = "Charge open storage intervals up to now (the beat schedule runs it hourly)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--now", type=moment, help="ISO moment to charge up to (a replay)")
        parser.add_argument("--batch-size", type=int, default=1000, help="jobs per transaction")

    def handle(self, *args: Any, **options: Any) -> None:
        run = storage_jobs_charge(now=options["now"], batch_size=options["batch_size"])
        self.stdout.write(str(run))
