"""Charging usage: money leaves a project for the system account, a job's hold first.

Services like those in billing/services.py (keyword-only, one transaction each); metering calls
them when usage is posted or a worker settles it. A charge may take a project below zero (the
overshoot DESIGN.md allows: usage already happened); the debt stays on a grant's remainder in
the project account, and the project can reserve or move nothing until it is paid back.

One implementation serves one charge and a worker's batch of thousands: the accounts are
locked in one statement (in id order), what the jobs hold and what the projects have come in
one query each, and every entry, line, balance and remainder is written in one statement.
"""

from __future__ import annotations

import json
import uuid as uuid_lib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Project, ServiceToken, User
from billing import recharge_trigger
from billing.errors import InsufficientFundsError
from billing.ledger import LEGS_APPLIED, AccountRef, Actor, Leg
from billing.models import AccountType, EntryType, Grant, GrantBalance, JournalLine
from billing.services import system_account_get_or_create
from core.db import Columns, execute_prepared

ZERO = Decimal(0)
BURN_ORDER = ("priority", "expires_at", "created_at", "id")  # nulls last: PostgreSQL's default
Lots = list[tuple[Grant, Decimal]]  # grant remainders, in burn order


@dataclass(frozen=True)
class ChargeOrder:
    """One charge of a batch: `amount` of the project's usage, from the job's hold first."""

    project_id: int
    lab_id: int
    amount: Decimal
    job_uuid: uuid_lib.UUID | None = None
    release_rest: bool = False  # give back what the job still holds afterwards
    reason: str = ""
    metadata: dict[str, object] | None = None


@dataclass(frozen=True)
class ChargeResult:
    from_hold: Decimal  # charged from what the job held in the reservation account
    from_project: Decimal  # charged from the project's budget (may have taken it below zero)
    released: Decimal  # what was left of the hold, given back (release_rest only)

    @property
    def charged(self) -> Decimal:
        return self.from_hold + self.from_project


@dataclass(frozen=True)
class _Entry:
    type: str
    legs: list[Leg]
    reason: str
    metadata: dict[str, object] | None
    job_uuid: uuid_lib.UUID | None


def _take(lots: Lots, amount: Decimal) -> Lots:
    """Take up to `amount` from the lots in order; the lots keep what is left (in place)."""
    taken = []
    for index, (grant, available) in enumerate(lots):
        if amount <= 0:
            break
        part = min(available, amount)
        if part > 0:
            taken.append((grant, part))
            lots[index] = (grant, available - part)
            amount -= part
    return taken


def _total(lots: Lots) -> Decimal:
    return sum((part for _, part in lots), ZERO)


_CHARGE_ACCOUNTS = """
SELECT id, type, project_id FROM billing_ledgeraccount
 WHERE type = 'sys' OR (type IN ('proj', 'rsv') AND project_id = ANY(%(projects)s::bigint[]))
 ORDER BY id FOR NO KEY UPDATE
"""


def charge_accounts_lock(project_ids: Sequence[int]) -> dict[tuple[str, int | None], int]:
    """Lock the system account and the projects' budget and reservation accounts in id order
    (one statement); returns {(type, project id or None): account id}. A worker locks its whole
    batch up front, so charging a job of it later takes no new lock out of order."""
    params = {"projects": list(project_ids)}
    rows = execute_prepared(_CHARGE_ACCOUNTS, params)
    if not any(kind == AccountType.SYSTEM for _, kind, _ in rows):
        system_account_get_or_create()  # only after a test flush; the migration makes it
        rows = execute_prepared(_CHARGE_ACCOUNTS, params)
    return {(kind, project_id): pk for pk, kind, project_id in rows}


_GRANT = Columns(Grant, "g")

# What jobs still hold, by grant, with the grants (one statement). LATERAL: each job's few
# entries (entry_job index), then their lines by entry (entry_id index); a plain join let the
# planner scan every reservation line.
_HELD = f"""
SELECT h.job_uuid, h.amount, {_GRANT.sql}
  FROM (
      SELECT e.job_uuid, l.grant_id, SUM(l.amount) AS amount
        FROM billing_journalentry e
        JOIN LATERAL (
            SELECT grant_id, amount FROM billing_journalline
             WHERE entry_id = e.id AND account_id = ANY(%(accounts)b::bigint[])
        ) l ON true
       WHERE e.job_uuid = ANY(%(jobs)b::uuid[])
       GROUP BY e.job_uuid, l.grant_id
      HAVING SUM(l.amount) > 0
  ) h
  JOIN billing_grant g ON g.id = h.grant_id
"""


def _held_by_job(reservation_ids: list[int], job_uuids: list[uuid_lib.UUID]) -> dict:
    """What each job still holds, grant by grant, in burn order: {job uuid: lots}."""
    held: dict[uuid_lib.UUID, Lots] = defaultdict(list)
    for row in execute_prepared(_HELD, {"accounts": reservation_ids, "jobs": job_uuids}):
        held[row[0]].append((_GRANT.load(row, 2), row[1]))
    for lots in held.values():
        lots.sort(key=lambda lot: _burn_key(lot[0]))
    return held


def _burn_key(grant: Grant) -> tuple:
    no_expiry = grant.expires_at is None
    return (
        grant.priority,
        no_expiry,
        grant.expires_at or grant.created_at,
        grant.created_at,
        grant.pk,
    )


# Each budget's positive remainders of grants in effect, in burn order (nulls last).
_BUDGETS = f"""
SELECT b.account_id, b.balance, {_GRANT.sql}
  FROM billing_grantbalance b JOIN billing_grant g ON g.id = b.grant_id
 WHERE b.account_id = ANY(%(accounts)s::bigint[]) AND b.balance > 0 AND g.effective_at <= %(at)s
 ORDER BY {", ".join(f"g.{field}" for field in BURN_ORDER)}
"""


def _budgets(budget_ids: list[int], at: datetime) -> dict[int, Lots]:
    """Each project budget's spendable grant remainders, in burn order: {account id: lots}."""
    lots: dict[int, Lots] = defaultdict(list)
    for row in execute_prepared(_BUDGETS, {"accounts": budget_ids, "at": at}):
        grant = _GRANT.load(row, 2)
        if grant.is_spendable_at(at):
            lots[row[0]].append((grant, row[1]))
    return lots


def _debt_grant(lab_id: int, budget_id: int, burned: Lots) -> int:
    """The grant an overdraft is written against: the last one this charge burned, else the
    project's newest, else its lab's newest. A lab that never had credits cannot owe any."""
    if burned:
        return burned[-1][0].pk
    grant_id = (
        GrantBalance.objects.filter(account_id=budget_id)
        .order_by("-grant_id")
        .values_list("grant_id", flat=True)
        .first()
        or Grant.objects.filter(lab_id=lab_id).order_by("-id").values_list("pk", flat=True).first()
    )
    if grant_id is None:
        raise InsufficientFundsError(
            "The project has never had credits to charge", requested_amount=ZERO
        )
    return grant_id


def usage_charges_post(*, orders: Sequence[ChargeOrder], actor: Actor = None) -> list[ChargeResult]:
    """Charge each order: from its job's hold first, then from its project's budget in burn
    order, then as a debt of the project; with `release_rest`, release what the job still
    holds afterwards (to the project, or to the system account for a grant that expired or was
    voided meanwhile). All in one transaction; results in the orders' order. Inside a caller's
    transaction it takes no savepoint: a caller that recovers from a failure makes its own."""
    if any(order.amount < 0 for order in orders):
        raise ValueError("a charge cannot be negative; use usage_refund")
    jobs = [order.job_uuid for order in orders if order.job_uuid]
    if len(jobs) != len(set(jobs)):
        raise ValueError("one order per job in a batch: its hold is taken and released once")
    with transaction.atomic(savepoint=False):
        results = _charges_post(orders, actor)
        recharge_trigger.debited(AccountRef(AccountType.PROJECT, o.project_id) for o in orders)
        return results


def _charges_post(orders: Sequence[ChargeOrder], actor: Actor) -> list[ChargeResult]:
    now = timezone.now()
    account = charge_accounts_lock(sorted({order.project_id for order in orders}))
    system = account[(AccountType.SYSTEM, None)]
    with_jobs = [o for o in orders if o.job_uuid]
    held = (
        _held_by_job(
            [account[(AccountType.RESERVATION, o.project_id)] for o in with_jobs],
            [o.job_uuid for o in with_jobs],
        )
        if with_jobs
        else {}
    )
    # The hold comes first; only what it does not cover needs the projects' budgets.
    from_hold = [_take(held.get(o.job_uuid, []), o.amount) if o.job_uuid else [] for o in orders]
    short = {
        account[(AccountType.PROJECT, o.project_id)]
        for o, taken in zip(orders, from_hold, strict=True)
        if o.amount > _total(taken)
    }
    budgets = _budgets(sorted(short), now) if short else {}
    entries: list[_Entry] = []
    results = []
    for order, taken in zip(orders, from_hold, strict=True):
        budget = account[(AccountType.PROJECT, order.project_id)]
        reservation = account[(AccountType.RESERVATION, order.project_id)]
        excess = order.amount - _total(taken)
        burned = _take(budgets.get(budget, []), excess) if excess else []
        legs: list[Leg] = []
        for grant, part in taken:
            legs += [Leg(reservation, grant.pk, -part), Leg(system, grant.pk, part)]
        for grant, part in burned:
            legs += [Leg(budget, grant.pk, -part), Leg(system, grant.pk, part)]
        debt = excess - _total(burned)
        if debt > 0:
            grant_id = _debt_grant(order.lab_id, budget, taken + burned)
            legs += [Leg(budget, grant_id, -debt), Leg(system, grant_id, debt)]
        tags = {"reason": order.reason, **(order.metadata or {})}
        if legs:
            entries.append(_Entry(EntryType.CHARGE, legs, order.reason, tags, order.job_uuid))
        released = ZERO
        if order.release_rest and order.job_uuid:
            release: list[Leg] = []
            for grant, left in held.get(order.job_uuid, []):
                if left > 0:
                    target = budget if grant.is_spendable_at(now) else system
                    release += [Leg(reservation, grant.pk, -left), Leg(target, grant.pk, left)]
                    released += left
            if release:
                entries.append(
                    _Entry(EntryType.RELEASE, release, order.reason, tags, order.job_uuid)
                )
        results.append(ChargeResult(_total(taken), excess, released))
    _entries_post(entries, actor=actor, at=now)
    return results


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
    """One charge (see usage_charges_post). A zero amount with `release_rest` only releases."""
    order = ChargeOrder(
        project.pk, project.lab_id, amount, job_uuid, release_rest, reason, metadata
    )
    return usage_charges_post(orders=[order], actor=actor)[0]


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
    account = charge_accounts_lock([project.pk])
    system, budget = account[(AccountType.SYSTEM, None)], account[(AccountType.PROJECT, project.pk)]
    charged = dict(
        JournalLine.objects.filter(
            account_id=system,
            entry__job_uuid=job_uuid,
            entry__type__in=[EntryType.CHARGE, EntryType.REFUND],
        )
        .values_list("grant_id")
        .annotate(total=Sum("amount"))
        .filter(total__gt=0)
    )
    grants = sorted(Grant.objects.in_bulk(charged).values(), key=_burn_key, reverse=True)
    # A grant that expired or was voided since gets back only what cancels a debt on it in the
    # project: that brings no dead credit back to life.
    owed = dict(
        GrantBalance.objects.filter(account_id=budget, grant__in=grants, balance__lt=0).values_list(
            "grant_id", "balance"
        )
    )
    returnable = [
        (g, charged[g.pk] if g.is_spendable_at(now) else min(charged[g.pk], -owed.get(g.pk, ZERO)))
        for g in grants
    ]
    legs: list[Leg] = []
    refunded = ZERO
    for grant, part in _take(returnable, amount):
        legs += [Leg(system, grant.pk, -part), Leg(budget, grant.pk, part)]
        refunded += part
    tags = {"reason": reason} if reason else None
    _entries_post([_Entry(EntryType.REFUND, legs, reason, tags, job_uuid)], actor=actor, at=now)
    return refunded


# Every entry of a batch, its lines, the accounts' balances and the grants' remainders, in one
# statement; columns travel as arrays (bound in binary: %b), so the size of a batch does not
# change the statement.
_POST_ENTRIES = f"""
WITH entries AS (
    INSERT INTO billing_journalentry
        (uuid, type, created_at, actor_user_id, actor_token_id, reason, metadata,
         idempotency_key, request_fingerprint, job_uuid)
    SELECT uuid, type, %(at)b, %(actor_user)b, %(actor_token)b, reason, metadata::jsonb,
           NULL, '', job_uuid
      FROM unnest(%(uuids)b::uuid[], %(types)b::text[], %(reasons)b::text[],
                  %(metadata)b::text[], %(jobs)b::uuid[])
           AS e (uuid, type, reason, metadata, job_uuid)
    RETURNING id, uuid
), legs AS (
    SELECT * FROM unnest(%(leg_entries)b::uuid[], %(leg_accounts)b::bigint[],
                         %(leg_grants)b::bigint[], %(leg_amounts)b::numeric[])
           AS l (entry_uuid, account_id, grant_id, amount)
), lines AS (
    INSERT INTO billing_journalline (entry_id, account_id, grant_id, amount)
    SELECT entries.id, legs.account_id, legs.grant_id, legs.amount
      FROM legs JOIN entries ON entries.uuid = legs.entry_uuid
), {LEGS_APPLIED}
SELECT COUNT(*) FROM entries
"""


def _entries_post(entries: list[_Entry], *, actor: Actor, at: datetime) -> None:
    """Write the entries; the accounts must be locked by the caller's transaction."""
    entries = [e for e in entries if any(leg.amount for leg in e.legs)]
    if not entries:
        return
    uuids = [uuid_lib.uuid4() for _ in entries]
    params: dict[str, object] = {
        "at": at,
        "actor_user": actor.pk if isinstance(actor, User) else None,
        "actor_token": actor.pk if isinstance(actor, ServiceToken) else None,
        "uuids": uuids,
        "types": [e.type for e in entries],
        "reasons": [e.reason for e in entries],
        "metadata": [json.dumps(e.metadata or {}, default=str) for e in entries],
        "jobs": [e.job_uuid for e in entries],
        "leg_entries": [],
        "leg_accounts": [],
        "leg_grants": [],
        "leg_amounts": [],
    }
    for entry_uuid, entry in zip(uuids, entries, strict=True):
        for leg in entry.legs:
            if leg.amount:
                params["leg_entries"].append(entry_uuid)  # type: ignore[attr-defined]
                params["leg_accounts"].append(leg.account_id)  # type: ignore[attr-defined]
                params["leg_grants"].append(leg.grant_id)  # type: ignore[attr-defined]
                params["leg_amounts"].append(leg.amount)  # type: ignore[attr-defined]
    execute_prepared(_POST_ENTRIES, params)
