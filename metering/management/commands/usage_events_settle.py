from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from core.cli import moment
from metering.settlement import usage_events_settle


class Command(BaseCommand):
    help = "Charge accepted batch usage events, summed per project and service (beat: 60 s)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--now", type=moment, help="ISO moment: settle events received up to then"
        )
        parser.add_argument("--batch-size", type=int, default=5000, help="events per transaction")

    def handle(self, *args: Any, **options: Any) -> None:
        run = usage_events_settle(now=options["now"], batch_size=options["batch_size"])
        self.stdout.write(str(run))
