"""Celery tasks of billing: thin, each calls one function of billing/sweeps.py."""

from __future__ import annotations

from celery import shared_task

from billing import sweeps
from core.tasks import RETRY_ON_DB_ERRORS


@shared_task(name="billing.grants_expire", **RETRY_ON_DB_ERRORS)
def grants_expire() -> int:
    return sweeps.grants_expire()


@shared_task(name="billing.ledger_audit")
def ledger_audit() -> int:
    return len(sweeps.ledger_audit_report())
