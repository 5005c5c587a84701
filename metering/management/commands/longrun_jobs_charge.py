from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from core.cli import moment
from metering.charging import longrun_jobs_charge


class Command(BaseCommand):
    help = "Charge running long-running jobs; close finished and expired ones (beat: every minute)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--now", type=moment, help="ISO moment to charge up to (a replay)")
        parser.add_argument("--batch-size", type=int, default=1000, help="jobs per transaction")

    def handle(self, *args: Any, **options: Any) -> None:
        run = longrun_jobs_charge(now=options["now"], batch_size=options["batch_size"])
        self.stdout.write(str(run))
