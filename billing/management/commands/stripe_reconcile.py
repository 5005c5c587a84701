from __future__ import annotations

import argparse
from datetime import UTC, datetime, time
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_date

from billing import stripe_gateway
from billing.reconcile import EARLIEST, stripe_reconcile
from core.cli import moment


def day_or_moment(value: str) -> datetime:
    """2026-01-31 (midnight UTC) or an ISO-8601 moment, not before 1970 (Stripe's timestamps
    are Unix seconds; earlier dates would also overflow the look-back arithmetic)."""
    try:
        day = parse_date(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date: {value!r}") from exc
    when = datetime.combine(day, time(), tzinfo=UTC) if day else moment(value)
    if when < EARLIEST:
        raise argparse.ArgumentTypeError(f"{value!r} is before {EARLIEST:%Y-%m-%d}")
    return when


class Command(BaseCommand):
    help = (
        "List paid Stripe sessions or charges without a grant, and paid grants without a paid "
        "Stripe object, since DATE; exit non-zero if any."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--since", type=day_or_moment, required=True, help="ISO date or moment")

    def handle(self, *args: Any, **options: Any) -> None:
        if stripe_gateway.offline():
            self.stdout.write("Offline test mode (no STRIPE_SECRET_KEY): nothing at Stripe.")
            return
        mismatches = stripe_reconcile(since=options["since"])
        for mismatch in mismatches:
            self.stderr.write(f"{mismatch.kind}: {mismatch.message}")
        if mismatches:
            raise CommandError(f"{len(mismatches)} mismatch(es) between Stripe and the ledger")
        self.stdout.write(f"Stripe and the ledger agree since {options['since']:%Y-%m-%d %H:%M}.")
