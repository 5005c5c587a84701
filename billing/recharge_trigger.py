"""The debit paths' hook into auto-recharge, kept off their hot path.

`debited(refs)` is called by every debit (charges, holds, budget moves). It looks the debited
accounts up in this process's list of auto-recharge targets (re-read from the database every
AUTO_RECHARGE_TARGETS_TTL_SECONDS), so a debit of an account without auto-recharge costs no
query. For a target, after the debit commits, one row is read (its balance); only under the
threshold does billing/auto_recharge.py get involved. A list that is briefly stale after a
setting changed in another process only delays a recharge until the sweep
(auto_recharge_sweep) or the next debit after the re-read; it never starts two: that is the
database's job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from decimal import Decimal

from django.conf import settings
from django.db import transaction

from billing.ledger import AccountRef
from billing.models import AccountType, AutoRecharge, LedgerAccount
from core.db import savepoint_if_nested

logger = logging.getLogger(__name__)
_lock = threading.Lock()
# {debited account: (auto-recharge id, threshold)}, and when it was read (monotonic seconds).
_targets: dict[AccountRef, tuple[int, Decimal]] = {}
_read_at: float | None = None


def targets_forget() -> None:
    """Read the list again at the next debit (after a setting changed in this process)."""
    global _read_at
    with _lock:
        _read_at = None


def _targets_now() -> dict[AccountRef, tuple[int, Decimal]]:
    global _targets, _read_at
    now = time.monotonic()
    if _read_at is not None and now - _read_at < settings.AUTO_RECHARGE_TARGETS_TTL_SECONDS:
        return _targets
    rows = AutoRecharge.objects.filter(enabled=True).values_list(
        "pk", "lab_id", "project_id", "threshold"
    )
    fresh = {
        (
            AccountRef(AccountType.PROJECT, project_id)
            if project_id
            else AccountRef(AccountType.LAB, lab_id)
        ): (pk, threshold)
        for pk, lab_id, project_id, threshold in rows
    }
    with _lock:
        _targets, _read_at = fresh, now
    return fresh


def debited(refs: Iterable[AccountRef]) -> None:
    """Accounts a debit is taking money from, in the debit's transaction (or just after it)."""
    targets = _targets_now()
    if not targets:
        return
    for ref in set(refs):
        target = targets.get(ref)
        if target is not None:
            setting_id, threshold = target
            transaction.on_commit(lambda s=setting_id, t=threshold, r=ref: _check(s, t, r))


def debited_committed(refs: Iterable[AccountRef]) -> None:
    """`debited`, for a debit already committed by the call that wrote it: a failure here
    must not turn that debit into an error answer (the sweep tries again)."""
    try:
        with savepoint_if_nested():  # a failed query must not abort the caller's transaction
            debited(refs)
    except Exception:
        logger.exception("auto-recharge trigger failed after a committed debit")


def _check(setting_id: int, threshold: Decimal, ref: AccountRef) -> None:
    """After the debit committed: it must not fail because of this (the sweep tries again)."""
    try:
        balance = LedgerAccount.objects.filter(ref.condition()).values_list("balance", flat=True)
        if (current := balance.first()) is not None and current < threshold:
            from billing import auto_recharge

            auto_recharge.recharge_start(setting_id=setting_id)
    except Exception:
        logger.exception("auto-recharge check %s failed; the sweep will try again", setting_id)
