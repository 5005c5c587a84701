"""Celery tasks of metering: thin, each calls one service."""

from __future__ import annotations

from celery import shared_task

from core.tasks import RETRY_ON_DB_ERRORS
from metering import charging, reservations, rollups, settlement


@shared_task(name="metering.usage_events_settle", **RETRY_ON_DB_ERRORS)
def usage_events_settle() -> int:
    """Charge the batch usage events accepted since the last run (beat: USAGE_SETTLE_PERIOD)."""
    return settlement.usage_events_settle().events


@shared_task(name="metering.longrun_jobs_charge", **RETRY_ON_DB_ERRORS)
def longrun_jobs_charge() -> int:
    """Charge running long-running jobs; close finished and expired ones (beat: every minute)."""
    return charging.longrun_jobs_charge().jobs_charged


@shared_task(name="metering.storage_jobs_charge", **RETRY_ON_DB_ERRORS)
def storage_jobs_charge() -> int:
    return charging.storage_jobs_charge().jobs_charged


@shared_task(name="metering.reservations_expire", **RETRY_ON_DB_ERRORS)
def reservations_expire() -> int:
    return reservations.reservations_expire()


@shared_task(name="metering.usage_rollup", **RETRY_ON_DB_ERRORS)
def usage_rollup() -> int:
    return rollups.usage_rollup()
