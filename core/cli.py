"""Argument types shared by the management commands."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from django.utils.dateparse import parse_datetime


def moment(value: str) -> datetime:
    """`--now`: an ISO-8601 moment (UTC unless it says otherwise), to replay a run."""
    parsed = parse_datetime(value)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 date and time: {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
