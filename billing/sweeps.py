"""Periodic work on the ledger: expire grants past their expiry, audit the invariants."""

from __future__ import annotations

import logging
from datetime import datetime

from django.core.mail import mail_admins
from django.db import transaction
from django.utils import timezone

from billing.audit import ledger_audit
from billing.models import Grant
from billing.services import grant_expire

logger = logging.getLogger(__name__)


def grants_expire(*, now: datetime | None = None, batch: int = 500) -> int:
    """Expire grants past their expiry (at `now`, which may not be later than the real time),
    one grant per transaction; grants another worker holds are skipped. Safe to run twice or
    to kill midway: an expired grant leaves the queue in the transaction that sweeps it.
    Returns how many expired."""
    now = now or timezone.now()
    expired = 0
    while expired < batch:
        with transaction.atomic():
            # Served by the partial index grant_expiry_queue.
            grant = (
                Grant.objects.select_for_update(skip_locked=True, no_key=True)
                .filter(expires_at__lte=now, expired_at__isnull=True, voided_at__isnull=True)
                .order_by("expires_at", "id")
                .first()
            )
            if grant is None:
                break
            swept = grant_expire(grant=grant)
            logger.info(
                "grant %s expired; %s credits back to the system account", grant.uuid, swept
            )
            expired += 1
    return expired


def ledger_audit_report() -> list[str]:
    """Run the audit; on any broken invariant, log it and mail the operators (OPERATOR_EMAILS)."""
    problems = ledger_audit()
    if problems:
        for problem in problems:
            logger.error("ledger audit: %s", problem)
        mail_admins(
            f"Ledger audit: {len(problems)} broken invariant(s)",
            "The daily ledger audit found:\n\n" + "\n".join(f"- {p}" for p in problems),
        )
    else:
        logger.info("ledger audit: every invariant holds")
    return problems
