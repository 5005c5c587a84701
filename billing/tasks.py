"""Celery tasks of billing: thin, each calls one function of billing/sweeps.py."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from billing import sweeps

RETRY = {"autoretry_for": (OperationalError,), "retry_backoff": True, "max_retries": 5}


@shared_task(name="billing.grants_expire", **RETRY)
def grants_expire() -> int:
    return sweeps.grants_expire()


@shared_task(name="billing.ledger_audit")
def ledger_audit() -> int:
    return len(sweeps.ledger_audit_report())
