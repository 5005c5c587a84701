"""The ledger's primitives: lock accounts, split an amount by burn order, post one balanced entry.

Callers (billing/services.py) run these inside one transaction; `transfer` is one by itself when
none is open. Accounts are always locked in id order, so two movements never deadlock; balances
and per-grant remainders are updated with one statement each, in the same transaction as the lines.
"""

from __future__ import annotations

import json
import uuid as uuid_lib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Q
from django.utils import timezone

from accounts.models import Lab, Project, ServiceToken, User
from billing.models import AccountType, JournalEntry, LedgerAccount
from core.db import Params, execute_pipelined, execute_prepared

Actor = User | ServiceToken | None


@dataclass(frozen=True)
class Leg:
    """One line of an entry: `amount` of `grant` into (positive) or out of `account`."""

    account_id: int
    grant_id: int
    amount: Decimal


@dataclass(frozen=True)
class AccountRef:
    """Names a ledger account without loading it: its type and owner (lab or project id)."""

    type: str
    owner_id: int | None = None

    def condition(self) -> Q:
        if self.type == AccountType.SYSTEM:
            return Q(type=self.type)
        owner = "lab_id" if self.type == AccountType.LAB else "project_id"
        return Q(type=self.type, **{owner: self.owner_id})

    def matches(self, account: LedgerAccount) -> bool:
        if account.type != self.type:
            return False
        if self.type == AccountType.SYSTEM:
            return True
        owner = account.lab_id if self.type == AccountType.LAB else account.project_id
        return owner == self.owner_id


SYSTEM = AccountRef(AccountType.SYSTEM)


def lab_ref(lab: Lab) -> AccountRef:
    return AccountRef(AccountType.LAB, lab.pk)


def project_ref(project: Project) -> AccountRef:
    return AccountRef(AccountType.PROJECT, project.pk)


def reservation_ref(project: Project) -> AccountRef:
    return AccountRef(AccountType.RESERVATION, project.pk)


def _account_where(ref: AccountRef, owner_param: str) -> tuple[str, dict[str, object]]:
    """SQL naming one account. The type is written as a literal (an AccountType value, never
    input), so the planner can use the per-type partial unique indexes of prepared plans."""
    kind = AccountType(ref.type).value
    if ref.type == AccountType.SYSTEM:
        return f"type = '{kind}'", {}
    owner = "lab_id" if ref.type == AccountType.LAB else "project_id"
    return f"(type = '{kind}' AND {owner} = %({owner_param})s)", {owner_param: ref.owner_id}


def _accounts_lock_sql(refs: Sequence[AccountRef]) -> tuple[str, dict[str, object]]:
    where, params = [], {}
    for index, ref in enumerate(refs):
        condition, owner = _account_where(ref, f"owner{index}")
        where.append(condition)
        params |= owner
    sql = (
        "SELECT id, type, lab_id, project_id, balance FROM billing_ledgeraccount"
        f" WHERE {' OR '.join(where)} ORDER BY id FOR NO KEY UPDATE"
    )
    return sql, params


def _accounts_found(refs: Sequence[AccountRef], rows: list[tuple[Any, ...]]) -> list[LedgerAccount]:
    locked = [
        LedgerAccount(id=pk, type=kind, lab_id=lab_id, project_id=project_id, balance=balance)
        for pk, kind, lab_id, project_id, balance in rows
    ]
    found = []
    for ref in refs:
        account = next((a for a in locked if ref.matches(a)), None)
        if account is None:
            raise LookupError(f"no ledger account {ref}")
        found.append(account)
    return found


def accounts_lock(*refs: AccountRef) -> list[LedgerAccount]:
    """Lock the named accounts in id order; return them in the order named. NO KEY UPDATE: the
    keys never change, and it does not block the key-share locks of foreign-key checks.

    Raw SQL on purpose: locking is on the hot path of every movement, and the ORM's query
    building cost more than the database work. No accounts (a lab without projects): none."""
    if not refs:
        return []
    return _accounts_found(refs, execute_prepared(*_accounts_lock_sql(refs)))


def transfer_legs(portions: Iterable[tuple[int, Decimal]], *, debit: int, credit: int) -> list[Leg]:
    legs: list[Leg] = []
    for grant_id, amount in portions:
        legs.append(Leg(debit, grant_id, -amount))
        legs.append(Leg(credit, grant_id, amount))
    return legs


# CTEs that move the accounts' balances and the grants' remainders by the rows of `legs`
# (account_id, grant_id, amount), in the statement that writes those lines.
LEGS_APPLIED = """accounts AS (
    UPDATE billing_ledgeraccount AS a
       SET balance = a.balance + d.delta, updated_at = now()
      FROM (SELECT account_id, SUM(amount) AS delta FROM legs GROUP BY account_id) AS d
     WHERE a.id = d.account_id
), remainders AS (
    INSERT INTO billing_grantbalance AS b (account_id, grant_id, balance)
    SELECT account_id, grant_id, SUM(amount) FROM legs GROUP BY account_id, grant_id
    ON CONFLICT (account_id, grant_id) DO UPDATE SET balance = b.balance + EXCLUDED.balance
)"""

# Writes the entry's lines (from `legs`), moves the accounts' balances and the grants'
# remainders, all in the statement that inserted `entry`.
_APPLY_LEGS = f"""
, lines AS (
    INSERT INTO billing_journalline (entry_id, account_id, grant_id, amount)
    SELECT entry.id, legs.account_id, legs.grant_id, legs.amount FROM entry, legs
), {LEGS_APPLIED}
SELECT (SELECT id FROM entry)
"""

_ENTRY_COLUMNS = """
    INSERT INTO billing_journalentry
        (uuid, type, created_at, actor_user_id, actor_token_id, reason, metadata,
         idempotency_key, request_fingerprint, job_uuid)
"""

_POST = (
    "WITH entry AS ("
    + _ENTRY_COLUMNS
    + """    VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)
    RETURNING id
), legs (account_id, grant_id, amount) AS (
    VALUES {legs}
)"""
    + _APPLY_LEGS
)

# A transfer splits the amount over the debited account's grants in burn order (lowest priority
# number, soonest expiry, none last, oldest) and writes nothing unless they cover it. It finds
# the two accounts by owner, as the lock statement sent with it in the same round trip does.
_TRANSFER = (
    """WITH debit AS (
    SELECT id, balance FROM billing_ledgeraccount WHERE {debit}
), credit AS (
    SELECT id FROM billing_ledgeraccount WHERE {credit}
), remainders_now AS (
    SELECT b.grant_id, b.balance,
           SUM(b.balance) OVER (
               ORDER BY g.priority, g.expires_at NULLS LAST, g.created_at, g.id
           ) AS through
      FROM billing_grantbalance b JOIN billing_grant g ON g.id = b.grant_id
     WHERE b.account_id = (SELECT id FROM debit) AND b.balance > 0 {spendable}
), portions AS (
    SELECT grant_id, LEAST(balance, %(amount)s - (through - balance)) AS amount
      FROM remainders_now WHERE through - balance < %(amount)s
), covered AS (
    -- A project in debt (usage overshoot) spends nothing until its balance covers the amount;
    -- a missing account covers nothing either (the caller raises LookupError).
    SELECT COALESCE(SUM(amount), 0) >= %(amount)s
       AND (SELECT balance FROM debit) >= %(amount)s
       AND EXISTS (SELECT FROM credit) AS ok
      FROM portions
), entry AS ("""
    + _ENTRY_COLUMNS
    + """    SELECT %(uuid)s, %(type)s, %(at)s, %(actor_user)s, %(actor_token)s, %(reason)s,
           %(metadata)s::jsonb, %(key)s, %(fingerprint)s, %(job)s
      FROM covered WHERE ok
    RETURNING id
), legs (account_id, grant_id, amount) AS (
    SELECT (SELECT id FROM debit), grant_id, -amount FROM portions WHERE (SELECT ok FROM covered)
    UNION ALL
    SELECT (SELECT id FROM credit), grant_id, amount FROM portions WHERE (SELECT ok FROM covered)
)"""
    + _APPLY_LEGS
)
_SPENDABLE = """
       AND g.effective_at <= %(at)s AND (g.expires_at IS NULL OR g.expires_at > %(at)s)
       AND g.voided_at IS NULL AND g.expired_at IS NULL"""


def _entry_new(
    *,
    type: str,
    actor: Actor,
    reason: str,
    metadata: dict[str, object] | None,
    idempotency_key: str | None,
    request_fingerprint: str,
    job_uuid: uuid_lib.UUID | None = None,
) -> JournalEntry:
    return JournalEntry(
        job_uuid=job_uuid,
        uuid=uuid_lib.uuid4(),
        type=type,
        created_at=timezone.now(),
        actor_user=actor if isinstance(actor, User) else None,
        actor_token=actor if isinstance(actor, ServiceToken) else None,
        reason=reason,
        metadata=metadata or {},
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
    )


def _saved(entry: JournalEntry, entry_id: int) -> JournalEntry:
    entry.id = entry_id
    entry._state.adding = False
    return entry


def entry_post(
    *,
    type: str,
    legs: Sequence[Leg],
    actor: Actor = None,
    reason: str = "",
    metadata: dict[str, object] | None = None,
    idempotency_key: str | None = None,
    request_fingerprint: str = "",
    job_uuid: uuid_lib.UUID | None = None,
) -> JournalEntry:
    """Write one entry, its lines, the accounts' balances and the grants' remainders in one
    statement (one round trip). The accounts must be locked by the caller's transaction."""
    legs = [leg for leg in legs if leg.amount != 0]
    if not legs:
        raise ValueError("an entry needs at least one non-zero line")
    entry = _entry_new(
        type=type,
        actor=actor,
        reason=reason,
        metadata=metadata,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
        job_uuid=job_uuid,
    )
    values = ", ".join(["(%s::bigint, %s::bigint, %s::numeric)"] * len(legs))
    params: list[object] = [
        entry.uuid,
        entry.type,
        entry.created_at,
        entry.actor_user_id,
        entry.actor_token_id,
        entry.reason,
        json.dumps(entry.metadata, default=str),
        entry.idempotency_key,
        entry.request_fingerprint,
        entry.job_uuid,
    ]
    for leg in legs:
        params += [leg.account_id, leg.grant_id, leg.amount]
    return _saved(entry, execute_prepared(_POST.format(legs=values), params)[0][0])


@dataclass(frozen=True)
class TransferPlan:
    """A transfer's two statements, to run in one round trip (alone, or in a caller's
    pipeline, in this order, after its other statements); `written` reads their results."""

    statements: list[tuple[str, Params]]
    entry: JournalEntry
    refs: tuple[AccountRef, AccountRef]

    def written(self, locked: list[tuple[Any, ...]], wrote: list[tuple[Any, ...]]):
        """The entry, or None when the debited grants could not cover the amount."""
        entry_id = wrote[0][0]
        if entry_id is None:
            _accounts_found(list(self.refs), locked)  # a missing account is not a shortfall
            return None
        return _saved(self.entry, entry_id)


def transfer_plan(
    *,
    type: str,
    debit: AccountRef,
    credit: AccountRef,
    amount: Decimal,
    spendable_only: bool = True,
    actor: Actor = None,
    reason: str = "",
    idempotency_key: str | None = None,
    request_fingerprint: str = "",
    job_uuid: uuid_lib.UUID | None = None,
) -> TransferPlan:
    """Lock both accounts in id order, then move `amount` from one to the other, grant by grant
    in burn order, writing nothing when the debited grants cannot cover it.

    They stay two statements: a statement reads with the snapshot it started with, so a write
    that took the locks itself would not see what the holder it waited for committed."""
    entry = _entry_new(
        type=type,
        actor=actor,
        reason=reason,
        metadata=None,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
        job_uuid=job_uuid,
    )
    debit_where, params = _account_where(debit, "debit_owner")
    credit_where, credit_owner = _account_where(credit, "credit_owner")
    params |= credit_owner | {
        "amount": amount,
        "uuid": entry.uuid,
        "type": type,
        "at": entry.created_at,
        "actor_user": entry.actor_user_id,
        "actor_token": entry.actor_token_id,
        "reason": reason,
        "metadata": "{}",
        "key": idempotency_key,
        "fingerprint": request_fingerprint,
        "job": job_uuid,
    }
    sql = _TRANSFER.format(
        debit=debit_where, credit=credit_where, spendable=_SPENDABLE if spendable_only else ""
    )
    return TransferPlan(
        [_accounts_lock_sql([debit, credit]), (sql, params)], entry, (debit, credit)
    )


def transfer(**kwargs: Any) -> JournalEntry | None:
    """transfer_plan's statements in one round trip; outside a transaction they commit together
    with it. Returns None, having written nothing, when the debited grants cannot cover it."""
    plan = transfer_plan(**kwargs)
    return plan.written(*execute_pipelined(*plan.statements))
