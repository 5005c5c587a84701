"""Low-balance alerts: a lab's owners and admins choose balances to watch (the lab's own, or a
project's budget) and a threshold; when the balance is under it, they get one mail. The alert
is armed again once the balance is back at or above the threshold, so each fall sends one mail.

The sweep (a task every BALANCE_ALERTS_SWEEP_PERIOD seconds) locks only the alerts whose state
changes (`FOR UPDATE SKIP LOCKED`) and marks a fall in the same transaction, so two sweeps never
see one fall twice. The mail is a task queued after the commit; it claims its send with a
conditional update (so a redelivered task sends nothing more), skips a fall that is over, and
gives the claim back when the mail server fails. A fall whose mail was never claimed (the queue
was down at the commit, a worker died) is queued again after MAIL_REQUEUE_AFTER.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, OuterRef, Q, Subquery, When
from django.urls import reverse
from django.utils import timezone

from accounts.models import Lab, Project, Role, User
from billing.errors import BudgetError
from billing.models import AccountType, BalanceAlert, LedgerAccount
from core.mail import people_mail
from core.money import credits_display

logger = logging.getLogger(__name__)

MAX_ALERTS_PER_LAB = 20
MAIL_REQUEUE_AFTER = timedelta(minutes=10)  # well past a queued mail's first attempt


class BalanceAlertError(BudgetError):
    """An alert the lab cannot have (a duplicate, too many)."""


def alert_add(
    *, lab: Lab, project: Project | None, threshold: Decimal, actor: User
) -> BalanceAlert:
    """The caller has checked that `actor` manages the lab."""
    if project is not None and project.lab_id != lab.pk:
        raise BalanceAlertError("Choose the lab or one of its own projects.")
    with transaction.atomic():
        Lab.objects.select_for_update(no_key=True).filter(pk=lab.pk).first()  # one add at a time
        alerts = BalanceAlert.objects.filter(lab=lab)
        if alerts.filter(project=project, threshold=threshold).exists():
            raise BalanceAlertError("This balance already has an alert at that threshold.")
        if alerts.count() >= MAX_ALERTS_PER_LAB:
            raise BalanceAlertError(f"A lab has at most {MAX_ALERTS_PER_LAB} alerts.")
        return BalanceAlert.objects.create(
            lab=lab, project=project, threshold=threshold, created_by=actor
        )


def alert_remove(*, lab: Lab, alert_uuid: str) -> bool:
    return BalanceAlert.objects.filter(lab=lab, uuid=alert_uuid).delete()[0] > 0


def _watched_balance() -> Case:
    """The balance an alert watches, read in the sweep's query."""
    balance = LedgerAccount.objects.values("balance")
    lab = balance.filter(type=AccountType.LAB, lab_id=OuterRef("lab_id"))
    project = balance.filter(type=AccountType.PROJECT, project_id=OuterRef("project_id"))
    return Case(When(project__isnull=True, then=Subquery(lab[:1])), default=Subquery(project[:1]))


def balance_alerts_sweep(*, now: datetime | None = None) -> int:
    """Mark the falls under a threshold and queue their mails; arm again the alerts whose
    balance is back; queue again the mails of falls never claimed. Returns how many fell."""
    now = now or timezone.now()
    from billing import tasks

    under = Q(balance__lt=F("threshold"))
    changing = (
        Q(under, notified_at__isnull=True)  # a new fall
        | Q(~under | Q(balance__isnull=True), notified_at__isnull=False)  # back: arm again
        | Q(under, mailed_at__isnull=True, notified_at__lt=now - MAIL_REQUEUE_AFTER)
    )
    with transaction.atomic():
        alerts = list(
            BalanceAlert.objects.annotate(balance=_watched_balance())
            .filter(changing)
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("pk")
        )
        fell = [a for a in alerts if a.notified_at is None and _under(a)]
        back = [a for a in alerts if a.notified_at is not None and not _under(a)]
        unsent = [a for a in alerts if a.notified_at is not None and _under(a)]
        BalanceAlert.objects.filter(pk__in=[a.pk for a in fell]).update(
            notified_at=now, mailed_at=None
        )
        BalanceAlert.objects.filter(pk__in=[a.pk for a in back]).update(
            notified_at=None, mailed_at=None
        )
        mails = [(a.pk, now.isoformat()) for a in fell]
        mails += [(a.pk, a.notified_at.isoformat()) for a in unsent]  # type: ignore[union-attr]
        for pk, fallen_at in mails:
            transaction.on_commit(
                lambda pk=pk, at=fallen_at: tasks.balance_alert_mail.delay(pk, at),
                robust=True,  # one mail that cannot be queued must not stop the others
            )
    for alert in fell:
        logger.info(
            "balance alert %s: %s credits, under %s", alert.uuid, alert.balance, alert.threshold
        )
    return len(fell)


def _under(alert: BalanceAlert) -> bool:
    # No account (a lab being created): nothing to say.
    balance = alert.balance  # type: ignore[attr-defined]
    return balance is not None and balance < alert.threshold


def alert_recipients(lab: Lab) -> list[str]:
    """The lab's owners and admins, who can act on it (top up, move budget)."""
    return list(
        lab.memberships.filter(role__in=[Role.OWNER, Role.ADMIN], user__is_active=True)
        .order_by("user__email")
        .values_list("user__email", flat=True)
    )


def balance_alert_send(*, alert_id: int, fallen_at: str) -> bool:
    """The mail of the fall the sweep marked at `fallen_at`, sent at most once: claimed first,
    skipped when the alert was armed again or fell again since, or the balance is back."""
    claimed = BalanceAlert.objects.filter(
        pk=alert_id, notified_at=datetime.fromisoformat(fallen_at), mailed_at__isnull=True
    ).update(mailed_at=timezone.now())
    if not claimed:
        return False
    alert = (
        BalanceAlert.objects.select_related("lab", "project")
        .annotate(balance=_watched_balance())
        .get(pk=alert_id)
    )
    recipients = alert_recipients(alert.lab)
    if not _under(alert) or not recipients:
        return False  # over (the sweep arms it again), or nobody to tell
    try:
        _mail(alert, alert.balance, recipients)  # type: ignore[attr-defined]
    except Exception:
        # Nothing went out: give the claim back so the task's retry sends it.
        BalanceAlert.objects.filter(pk=alert_id).update(mailed_at=None)
        raise
    return True


def _mail(alert: BalanceAlert, balance: Decimal, recipients: list[str]) -> None:
    lab = alert.lab
    watched = f"project {alert.project.name}'s budget" if alert.project else "the lab's balance"
    link = settings.PORTAL_BASE_URL + reverse("lab_billing", args=[lab.uuid])
    people_mail(
        f"Low balance in {lab.name}: {credits_display(balance)} credits",
        (
            f"In {lab.name}, {watched} is {credits_display(balance)} credits, under the alert"
            f" you set at {credits_display(alert.threshold)} credits.\n\n"
            f"Top up or move credits between budgets: {link}\n\n"
            "You get this once; the alert is armed again when the balance is back at or above"
            " the threshold.\n"
        ),
        recipients,
    )
