"""Low-balance alerts: a lab's owners and admins choose balances to watch (the lab's own, or a
project's budget) and a threshold; when the balance is under it, they get one mail. The alert
is armed again once the balance is back at or above the threshold, so each fall sends one mail.

The sweep (a task every BALANCE_ALERTS_SWEEP_PERIOD seconds) claims the alerts with
`SELECT … FOR UPDATE SKIP LOCKED` and marks each one it fires in the same transaction, so two
sweeps never mail the same fall twice; the mail goes out from a task after the commit.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Case, OuterRef, Subquery, When
from django.urls import reverse
from django.utils import timezone

from accounts.models import Lab, Project, Role, User
from billing.errors import BudgetError
from billing.models import AccountType, BalanceAlert, LedgerAccount
from core.money import decimal_plain

logger = logging.getLogger(__name__)

MAX_ALERTS_PER_LAB = 20


class BalanceAlertError(BudgetError):
    """An alert the lab cannot have (a duplicate, too many)."""


def alert_add(
    *, lab: Lab, project: Project | None, threshold: Decimal, actor: User
) -> BalanceAlert:
    """The caller has checked that `actor` manages the lab and `project` is one of its own."""
    with transaction.atomic():
        Lab.objects.select_for_update().filter(pk=lab.pk).first()  # one count at a time
        if BalanceAlert.objects.filter(lab=lab).count() >= MAX_ALERTS_PER_LAB:
            raise BalanceAlertError(f"A lab has at most {MAX_ALERTS_PER_LAB} alerts.")
        try:
            with transaction.atomic():
                return BalanceAlert.objects.create(
                    lab=lab, project=project, threshold=threshold, created_by=actor
                )
        except IntegrityError as exc:
            raise BalanceAlertError("This balance already has an alert at that threshold.") from exc


def alert_remove(*, lab: Lab, alert_uuid: str) -> bool:
    return BalanceAlert.objects.filter(lab=lab, uuid=alert_uuid).delete()[0] > 0


def _watched_balance() -> Case:
    """The balance an alert watches, read in the sweep's query."""
    balance = LedgerAccount.objects.values("balance")
    lab = balance.filter(type=AccountType.LAB, lab_id=OuterRef("lab_id"))
    project = balance.filter(type=AccountType.PROJECT, project_id=OuterRef("project_id"))
    return Case(When(project__isnull=True, then=Subquery(lab[:1])), default=Subquery(project[:1]))


def balance_alerts_sweep(*, now: datetime | None = None) -> int:
    """Fire the armed alerts whose balance is under their threshold; arm again the fired ones
    whose balance is back. Returns how many fired."""
    now = now or timezone.now()
    from billing import tasks

    with transaction.atomic():
        alerts = list(
            BalanceAlert.objects.select_for_update(skip_locked=True, of=("self",))
            .annotate(balance=_watched_balance())
            .order_by("pk")
        )
        fired = [a for a in alerts if a.notified_at is None and _under(a)]
        rearmed = [a for a in alerts if a.notified_at is not None and not _under(a)]
        BalanceAlert.objects.filter(pk__in=[a.pk for a in fired]).update(notified_at=now)
        BalanceAlert.objects.filter(pk__in=[a.pk for a in rearmed]).update(notified_at=None)
        for alert in fired:
            balance = str(alert.balance)
            transaction.on_commit(
                lambda pk=alert.pk, b=balance: tasks.balance_alert_mail.delay(pk, b)
            )
    for alert in fired:
        logger.info("balance alert %s fired at %s credits", alert.uuid, alert.balance)
    return len(fired)


def _under(alert: BalanceAlert) -> bool:
    # No account yet (a lab being created): nothing to say.
    return alert.balance is not None and alert.balance < alert.threshold  # type: ignore[attr-defined]


def alert_recipients(lab: Lab) -> list[str]:
    """The lab's owners and admins, who can act on it (top up, move budget)."""
    return list(
        lab.memberships.filter(role__in=[Role.OWNER, Role.ADMIN], user__is_active=True)
        .order_by("user__email")
        .values_list("user__email", flat=True)
    )


def balance_alert_send(*, alert_id: int, balance: str) -> bool:
    """The mail of one fall under the threshold (the sweep claimed it once)."""
    alert = BalanceAlert.objects.select_related("lab", "project").filter(pk=alert_id).first()
    if alert is None:  # removed since
        return False
    recipients = alert_recipients(alert.lab)
    if not recipients:
        return False
    lab = alert.lab
    watched = f"project {alert.project.name}'s budget" if alert.project else "the lab's balance"
    link = settings.PORTAL_BASE_URL + reverse("lab_billing", args=[lab.uuid])
    send_mail(
        f"Low balance in {lab.name}: {decimal_plain(Decimal(balance))} credits",
        (
            f"In {lab.name}, {watched} is {decimal_plain(Decimal(balance))} credits, under the"
            f" alert you set at {decimal_plain(alert.threshold)} credits.\n\n"
            f"Top up or move credits between budgets: {link}\n\n"
            "You get this once; the alert is armed again when the balance is back above the"
            " threshold.\n"
        ),
        None,
        recipients,
    )
    return True
