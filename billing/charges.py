"""Charging usage: money leaves a project for the system account, a job's hold first.

Services like those in billing/services.py (keyword-only, one transaction each); metering calls
them when usage is posted or a worker settles it. A charge may take a project below zero (the
overshoot DESIGN.md allows: usage already happened); the debt stays on a grant's remainder in
the project account, and the project can reserve or move nothing until it is paid back.
"""

from __future__ import annotations

import uuid as uuid_lib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Project
from billing.errors import InsufficientFundsError
from billing.ledger import (
    SYSTEM,
    Actor,
    Leg,
    accounts_lock,
    entry_post,
    project_ref,
    reservation_ref,
)
from billing.models import AccountType, EntryType, Grant, GrantBalance, JournalLine, LedgerAccount
from billing.services import system_account_get_or_create

ZERO = Decimal(0)
BURN_ORDER = ("priority", "expires_at", "created_at", "id")  # nulls last: PostgreSQL's default


@dataclass(frozen=True)
class ChargeResult:
    from_hold: Decimal  # charged from what the job held in the reservation account
    from_project: Decimal  # charged from the project's budget (may have taken it below zero)
    released: Decimal  # what was left of the hold, given back (release_rest only)

    @property
    def charged(self) -> Decimal:
        return self.from_hold + self.from_project


def _spendable(grant: Grant, at: datetime) -> bool:
    return (
        grant.voided_at is None
        and grant.expired_at is None
        and (grant.expires_at is None or grant.expires_at > at)
    )


def _held_in_burn_order(
    reservation: LedgerAccount, job_uuid: uuid_lib.UUID
) -> list[tuple[Grant, Decimal]]:
    """What the job still holds, grant by grant, in burn order."""
    grants = (
        Grant.objects.filter(lines__account=reservation, lines__entry__job_uuid=job_uuid)
        .annotate(held=Sum("lines__amount"))
        .filter(held__gt=0)
        .order_by(*BURN_ORDER)
    )
    return [(grant, grant.held) for grant in grants]


def _accounts_lock(project: Project, *, with_reservation: bool = True) -> list[LedgerAccount]:
    """System, project (and reservation) accounts, locked; the system account is created on
    the rare first use after a flush rather than looked up on every charge."""
    refs = [SYSTEM, project_ref(project)] + ([reservation_ref(project)] if with_reservation else [])
    try:
        return accounts_lock(*refs)
    except LookupError:
        system_account_get_or_create()
        return accounts_lock(*refs)


def _budget_in_burn_order(budget: LedgerAccount, at: datetime) -> list[tuple[Grant, Decimal]]:
    """The project's spendable grant remainders, in burn order."""
    rows = (
        GrantBalance.objects.filter(
            account=budget,
            balance__gt=0,
            grant__effective_at__lte=at,
            grant__voided_at__isnull=True,
            grant__expired_at__isnull=True,
        )
        .select_related("grant")
        .order_by(*(f"grant__{field}" for field in BURN_ORDER))
    )
    return [(row.grant, row.balance) for row in rows if _spendable(row.grant, at)]


def _debt_grant(project: Project, budget: LedgerAccount, tried: list[Grant]) -> int:
    """The grant an overdraft is written against: the last one this charge burned, else the
    project's newest, else its lab's newest. A lab that never had credits cannot owe any."""
    if tried:
        return tried[-1].pk
    grant_id = (
        GrantBalance.objects.filter(account=budget)
        .order_by("-grant_id")
        .values_list("grant_id", flat=True)
        .first()
        or Grant.objects.filter(lab_id=project.lab_id)
        .order_by("-id")
        .values_list("pk", flat=True)
        .first()
    )
    if grant_id is None:
        raise InsufficientFundsError(
            "The project has never had credits to charge", requested_amount=ZERO
        )
    return grant_id


def _take(portions: list[tuple[Grant, Decimal]], amount: Decimal) -> list[tuple[Grant, Decimal]]:
    taken = []
    for grant, available in portions:
        if amount <= 0:
            break
        part = min(available, amount)
        taken.append((grant, part))
        amount -= part
    return taken


@transaction.atomic
def usage_charge(
    *,
    project: Project,
    amount: Decimal,
    job_uuid: uuid_lib.UUID | None = None,
    release_rest: bool = False,
    reason: str = "",
    metadata: dict[str, object] | None = None,
    actor: Actor = None,
) -> ChargeResult:
    """Charge `amount` for usage: from the job's hold first, then from the project's budget in
    burn order, then as a debt of the project. With `release_rest`, what the job still holds
    afterwards is released (to the project, or to the system account for a grant that expired
    or was voided meanwhile). A zero amount only releases."""
    if amount < 0:
        raise ValueError("a charge cannot be negative; use usage_refund")
    now = timezone.now()
    system, budget, reservation = _accounts_lock(project)
    held = _held_in_burn_order(reservation, job_uuid) if job_uuid else []
    from_hold = _take(held, amount)
    hold_part = sum((part for _, part in from_hold), ZERO)
    excess = amount - hold_part
    from_budget = _take(_budget_in_burn_order(budget, now), excess) if excess else []
    budget_part = sum((part for _, part in from_budget), ZERO)
    legs: list[Leg] = []
    for grant, part in from_hold:
        legs += [Leg(reservation.pk, grant.pk, -part), Leg(system.pk, grant.pk, part)]
    for grant, part in from_budget:
        legs += [Leg(budget.pk, grant.pk, -part), Leg(system.pk, grant.pk, part)]
    debt = excess - budget_part
    if debt > 0:
        grant_id = _debt_grant(project, budget, [g for g, _ in from_hold + from_budget])
        legs += [Leg(budget.pk, grant_id, -debt), Leg(system.pk, grant_id, debt)]
    tags = {"reason": reason, **(metadata or {})} if reason or metadata else None
    if legs:
        entry_post(
            type=EntryType.CHARGE,
            legs=legs,
            actor=actor,
            reason=reason,
            metadata=tags,
            job_uuid=job_uuid,
        )
    released = ZERO
    if release_rest:
        taken = dict((grant.pk, part) for grant, part in from_hold)
        rest = [(g, left - taken.get(g.pk, ZERO)) for g, left in held]
        release_legs: list[Leg] = []
        for grant, left in rest:
            if left > 0:
                target = budget if _spendable(grant, now) else system
                release_legs += [
                    Leg(reservation.pk, grant.pk, -left),
                    Leg(target.pk, grant.pk, left),
                ]
                released += left
        if release_legs:
            entry_post(
                type=EntryType.RELEASE,
                legs=release_legs,
                actor=actor,
                reason=reason,
                metadata=tags,
                job_uuid=job_uuid,
            )
    return ChargeResult(from_hold=hold_part, from_project=excess, released=released)


@transaction.atomic
def usage_refund(
    *,
    project: Project,
    job_uuid: uuid_lib.UUID,
    amount: Decimal,
    reason: str = "",
    actor: Actor = None,
) -> Decimal:
    """Give a job's overcharge back to its project: system → project, on the grants the job's
    charges took, newest in burn order first, never more than they took. Charges of a grant
    that expired or was voided since are not given back (the credits would be dead on
    arrival). Returns what was refunded."""
    if amount <= 0:
        return ZERO
    now = timezone.now()
    system, budget = _accounts_lock(project, with_reservation=False)
    charged = dict(
        JournalLine.objects.filter(
            account__type=AccountType.SYSTEM,
            entry__job_uuid=job_uuid,
            entry__type__in=[EntryType.CHARGE, EntryType.REFUND],
        )
        .values_list("grant_id")
        .annotate(total=Sum("amount"))
        .filter(total__gt=0)
    )
    grants = Grant.objects.filter(pk__in=charged).order_by(*BURN_ORDER).reverse()
    returnable = [(g, charged[g.pk]) for g in grants if _spendable(g, now)]
    legs: list[Leg] = []
    refunded = ZERO
    for grant, part in _take(returnable, amount):
        legs += [Leg(system.pk, grant.pk, -part), Leg(budget.pk, grant.pk, part)]
        refunded += part
    if legs:
        entry_post(
            type=EntryType.REFUND,
            legs=legs,
            actor=actor,
            reason=reason,
            metadata={"reason": reason} if reason else None,
            job_uuid=job_uuid,
        )
    return refunded
