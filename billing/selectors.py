"""Reads of balances, grants and history, always for an acting person or token."""

from __future__ import annotations

import uuid as uuid_lib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.db.models import DecimalField, Exists, F, OuterRef, Prefetch, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts import selectors as account_selectors
from accounts.models import Lab, Project
from accounts.selectors import Actor
from billing.errors import TopUpNotFoundError
from billing.models import (
    DEBT_OPEN,
    MONEY_MOVEMENT_TYPES,
    AccountType,
    EntryType,
    Grant,
    GrantBalance,
    GrantCategory,
    JournalEntry,
    JournalLine,
    LabDebt,
    LedgerAccount,
    Plan,
    PlanSubscription,
    TopUp,
)

ZERO = Decimal(0)


@dataclass(frozen=True)
class ProjectBalance:
    project: Project
    balance: Decimal  # the project's budget account
    spendable: Decimal  # of which grants in effect, not expired or voided: what it can reserve
    reserved: Decimal  # held by open reservations


@dataclass(frozen=True)
class LabBalance:
    lab: Lab
    balance: Decimal  # credits in the lab account, not yet assigned to a project
    spendable: Decimal  # of which grants in effect and not expired or voided
    projects: list[ProjectBalance]

    @property
    def project_total(self) -> Decimal:
        """What the projects have, held credits included."""
        return sum((project.balance + project.reserved for project in self.projects), ZERO)


def _spendable(at: datetime) -> Q:
    return (Q(grant__expires_at__isnull=True) | Q(grant__expires_at__gt=at)) & Q(
        grant__effective_at__lte=at, grant__voided_at__isnull=True, grant__expired_at__isnull=True
    )


def _sum(rows: QuerySet[GrantBalance]) -> Decimal:
    return rows.aggregate(total=Coalesce(Sum("balance"), Value(ZERO), output_field=DecimalField()))[
        "total"
    ]


def system_balance_get() -> Decimal | None:
    """The system account's balance (operators and global service tokens only)."""
    return (
        LedgerAccount.objects.filter(type=AccountType.SYSTEM)
        .values_list("balance", flat=True)
        .first()
    )


def project_balances(projects: list[Project]) -> list[ProjectBalance]:
    accounts = LedgerAccount.objects.filter(
        project__in=projects, type__in=[AccountType.PROJECT, AccountType.RESERVATION]
    ).values_list("project_id", "type", "balance")
    by_project: dict[tuple[int, str], Decimal] = {(p, t): b for p, t, b in accounts}
    spendable = dict(
        GrantBalance.objects.filter(
            _spendable(timezone.now()),
            account__project__in=projects,
            account__type=AccountType.PROJECT,
            balance__gt=0,
        )
        .values_list("account__project_id")
        .annotate(total=Sum("balance"))
    )
    rows = []
    for project in projects:
        balance = by_project.get((project.pk, AccountType.PROJECT), ZERO)
        rows.append(
            ProjectBalance(
                project=project,
                balance=balance,
                # Below zero for a project in debt (usage overshoot): it owes that much.
                spendable=min(spendable.get(project.pk, ZERO), balance),
                reserved=by_project.get((project.pk, AccountType.RESERVATION), ZERO),
            )
        )
    return rows


def lab_balance(lab: Lab) -> LabBalance:
    """For a lab the caller has already been allowed to see."""
    account = LedgerAccount.objects.filter(type=AccountType.LAB, lab=lab).first()
    held = GrantBalance.objects.filter(account=account, balance__gt=0)
    projects = list(lab.projects.order_by("name", "id"))
    return LabBalance(
        lab=lab,
        balance=account.balance if account else ZERO,
        spendable=_sum(held.filter(_spendable(timezone.now()))),
        projects=project_balances(projects),
    )


@dataclass(frozen=True)
class GrantRow:
    grant: Grant
    in_lab: Decimal
    in_projects: Decimal
    reserved: Decimal

    @property
    def remaining(self) -> Decimal:
        return self.in_lab + self.in_projects + self.reserved

    @property
    def status(self) -> str:
        return self.grant.status()


def grant_list(*, actor: Actor, lab: Lab) -> list[GrantRow]:
    """A lab's grants with where their credits are now, in burn order."""
    lab = account_selectors.lab_get(actor=actor, lab_uuid=lab.uuid)
    grants = list(lab.grants.order_by("priority", "expires_at", "created_at", "id"))
    sums: dict[tuple[int, str], Decimal] = {}
    for grant_id, kind, total in (
        GrantBalance.objects.filter(grant__in=grants)
        .exclude(account__type=AccountType.SYSTEM)
        .values_list("grant_id", "account__type")
        .annotate(total=Sum("balance"))
    ):
        sums[(grant_id, kind)] = total
    return [
        GrantRow(
            grant=grant,
            in_lab=sums.get((grant.pk, AccountType.LAB), ZERO),
            in_projects=sums.get((grant.pk, AccountType.PROJECT), ZERO),
            reserved=sums.get((grant.pk, AccountType.RESERVATION), ZERO),
        )
        for grant in grants
    ]


# Movements that make or take back a grant: they are named with its source.
GRANT_ENTRY_TYPES = (
    EntryType.TOP_UP,
    EntryType.GRANT,
    EntryType.EXPIRE,
    EntryType.VOID,
    EntryType.CHARGEBACK,
    EntryType.REINSTATE,
)


@dataclass(frozen=True)
class Activity:
    entry: JournalEntry
    what: str  # "Top-up · Stripe payment", "Top-up · Operator, promotional"
    moved: str  # where the credits went among the lab's accounts: "Lab account → Default"
    amount: Decimal


def lab_activity(*, actor: Actor, lab: Lab, limit: int = 20) -> list[Activity]:
    """The lab's latest money movements, newest first: top-ups, grants, budget moves, expiries,
    refunds and disputes on the lab's and its projects' accounts (not holds and usage)."""
    lab = account_selectors.lab_get(actor=actor, lab_uuid=lab.uuid)
    accounts = {
        account.pk: account
        for account in LedgerAccount.objects.filter(lab=lab)
        .exclude(type=AccountType.RESERVATION)
        .select_related("project")
    }
    # Newest first down the entry_money_movements index (holds and usage, one of each a job,
    # are on the usage pages), each checked for a line of this lab.
    ours = JournalLine.objects.filter(entry=OuterRef("pk"), account_id__in=list(accounts))
    entries = (
        JournalEntry.objects.filter(Exists(ours), type__in=MONEY_MOVEMENT_TYPES)
        .select_related("actor_user", "actor_token")
        .prefetch_related(Prefetch("lines", JournalLine.objects.select_related("grant")))
        .order_by("-id")[:limit]
    )
    return [_activity(entry, accounts) for entry in entries]


def _activity(entry: JournalEntry, accounts: dict[int, LedgerAccount]) -> Activity:
    def names(lines: list[JournalLine]) -> str:
        named = dict.fromkeys(
            "Lab account" if accounts[line.account_id].project is None
            else accounts[line.account_id].project.name
            for line in lines
        )  # fmt: skip
        return ", ".join(named) or "outside"

    ours = [line for line in entry.lines.all() if line.account_id in accounts]
    came = [line for line in ours if line.amount > 0]
    went = [line for line in ours if line.amount < 0]
    amount = sum((line.amount for line in came), ZERO) or -sum((line.amount for line in went), ZERO)
    grants = {line.grant_id: line.grant for line in ours}.values()
    sources = dict.fromkeys(
        grant.get_source_display()
        + (", promotional" if grant.category == GrantCategory.PROMOTIONAL else "")
        for grant in grants
    )
    what = entry.get_type_display()
    if entry.type in GRANT_ENTRY_TYPES and len(sources) == 1:
        what += f" · {next(iter(sources))}"
    return Activity(entry=entry, what=what, moved=f"{names(went)} → {names(came)}", amount=amount)


def job_held(*, job_uuid: uuid_lib.UUID) -> Decimal:
    """What is still held for a job in its project's reservation account."""
    total = JournalLine.objects.filter(
        account__type=AccountType.RESERVATION, entry__job_uuid=job_uuid
    ).aggregate(total=Sum("amount"))["total"]
    return total or ZERO


@dataclass(frozen=True)
class ChargeSum:
    """What usage cost one project in one hour, for one job (or one batch-usage service)."""

    period: datetime
    project_id: int
    lab_id: int
    job_uuid: uuid_lib.UUID | None
    service_slug: str | None  # batch-usage charges name their service in the entry's metadata
    service_type: str | None
    amount: Decimal  # charges less refunds
    charges: int


def charges_by_hour(*, start: datetime, end: datetime) -> list[ChargeSum]:
    """Usage charges and refunds of entries made in [start, end), by hour, project and job: the
    source of metering's usage rollups (system work, not shown to anyone as such)."""
    sql = """
        SELECT date_trunc('hour', e.created_at) AS period, a.project_id, a.lab_id, e.job_uuid,
               e.metadata->>'service', e.metadata->>'service_type', -SUM(l.amount),
               COUNT(DISTINCT e.id) FILTER (
                   WHERE e.type = 'charge')
          FROM billing_journalentry e
          JOIN billing_journalline l ON l.entry_id = e.id
          JOIN billing_ledgeraccount a ON a.id = l.account_id AND a.type IN ('proj', 'rsv')
         WHERE e.type IN ('charge', 'refund') AND e.created_at >= %s AND e.created_at < %s
         GROUP BY 1, 2, 3, 4, 5, 6
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [start, end])
        return [ChargeSum(*row) for row in cursor.fetchall()]


# Top-ups ---------------------------------------------------------------------------------------


def topup_list(*, actor: Actor, lab: Lab, limit: int = 50) -> list[TopUp]:
    """A lab's top-ups, newest first (index topup_lab_history)."""
    lab = account_selectors.lab_get(actor=actor, lab_uuid=lab.uuid)
    rows = TopUp.objects.filter(lab=lab).select_related("project", "created_by")
    return list(rows.order_by("-created_at", "-id")[:limit])


def topup_get(*, actor: Actor, lab: Lab, topup_uuid: uuid_lib.UUID | str) -> TopUp:
    lab = account_selectors.lab_get(actor=actor, lab_uuid=lab.uuid)
    topup = TopUp.objects.select_related("lab", "project", "created_by").filter(
        lab=lab, uuid=topup_uuid
    )
    found = topup.first()
    if found is None:
        raise TopUpNotFoundError()
    return found


def lab_debt(*, lab: Lab) -> Decimal:
    """What the lab still owes after refunds and disputes (index lab_debt_open)."""
    total = LabDebt.objects.filter(DEBT_OPEN, lab=lab).aggregate(
        total=Sum(F("amount") - F("repaid") - F("forgiven"))
    )["total"]
    return total or ZERO


@dataclass(frozen=True)
class PlanState:
    subscription: PlanSubscription
    granted: Decimal  # this period's grant
    left: Decimal  # of which still in the lab or its projects, not held
    held: Decimal = ZERO  # of which held for jobs in progress (spent or given back later)

    @property
    def remaining(self) -> Decimal:
        """What is left of the grant, held credits included: its "Left" in the grant table."""
        return self.left + self.held

    @property
    def renewing(self) -> bool:
        """The period has ended and the renewal sweep has not yet granted the next one."""
        return self.subscription.period_end <= timezone.now()


def plan_default() -> Plan | None:
    """The plan every new user's personal lab starts on, if operators have set one."""
    return Plan.objects.filter(is_default=True, active=True).first()


def plan_subscription_current(*, lab_id: int) -> PlanSubscription | None:
    """The lab's open plan subscription, with its plan, project and this period's grant."""
    return (
        PlanSubscription.objects.filter(lab_id=lab_id, ended_at__isnull=True)
        .select_related("plan", "project", "grant")
        .first()
    )


def plan_state(subscription: PlanSubscription) -> PlanState:
    """A subscription with what is left of this period's credits."""
    grant = subscription.grant
    if grant is None:
        return PlanState(subscription=subscription, granted=ZERO, left=ZERO)
    left = _sum(
        GrantBalance.objects.filter(
            grant=grant, account__type__in=[AccountType.LAB, AccountType.PROJECT]
        )
    )
    held = _sum(GrantBalance.objects.filter(grant=grant, account__type=AccountType.RESERVATION))
    return PlanState(subscription=subscription, granted=grant.amount, left=left, held=held)


def plan_current(*, lab: Lab) -> PlanState | None:
    """The plan the lab is on, with what is left of this period's credits."""
    subscription = plan_subscription_current(lab_id=lab.pk)
    return None if subscription is None else plan_state(subscription)


def grant_expired_total(grant: Grant) -> Decimal:
    """What the grant's expiry gave back to the system account (every sweep of it so far)."""
    total = JournalLine.objects.filter(
        grant=grant, entry__type=EntryType.EXPIRE, account__type=AccountType.SYSTEM
    ).aggregate(total=Sum("amount"))["total"]
    return total or ZERO
