"""The ledger's primitives: lock accounts, split an amount by burn order, post one balanced entry.

Callers (billing/services.py) run these inside one transaction. Accounts are always locked in id
order, so two movements never deadlock; balances and per-grant remainders are updated with one
statement each, in the same transaction as the lines.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from accounts.models import Lab, Project, ServiceToken, User
from billing.models import (
    AccountType,
    GrantBalance,
    JournalEntry,
    JournalLine,
    LedgerAccount,
)

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


def accounts_lock(*refs: AccountRef) -> list[LedgerAccount]:
    """Lock the named accounts FOR UPDATE in id order; return them in the order named."""
    condition = Q()
    for ref in refs:
        condition |= ref.condition()
    locked = list(LedgerAccount.objects.select_for_update().filter(condition).order_by("pk"))
    found = []
    for ref in refs:
        account = next((a for a in locked if ref.matches(a)), None)
        if account is None:
            raise LookupError(f"no ledger account {ref}")
        found.append(account)
    return found


def spendable_remainders(
    account_id: int, *, at: datetime, spendable_only: bool = True
) -> list[tuple[int, Decimal]]:
    """(grant id, remainder) of the account, in burn order: lowest priority number, soonest
    expiry (none last), oldest. With spendable_only, only grants in effect and not expired."""
    rows = GrantBalance.objects.filter(account_id=account_id, balance__gt=0)
    if spendable_only:
        rows = rows.filter(
            Q(grant__expires_at__isnull=True) | Q(grant__expires_at__gt=at),
            grant__effective_at__lte=at,
            grant__voided_at__isnull=True,
            grant__expired_at__isnull=True,
        )
    rows = rows.order_by(
        "grant__priority", "grant__expires_at", "grant__created_at", "grant_id"
    )  # expires_at: PostgreSQL sorts NULLs last when ascending
    return list(rows.values_list("grant_id", "balance"))


def burn(remainders: Sequence[tuple[int, Decimal]], amount: Decimal) -> list[tuple[int, Decimal]]:
    """Split `amount` over the remainders in their order. Returns fewer than `amount` in total
    when the remainders do not cover it; the caller decides whether that is an error."""
    portions: list[tuple[int, Decimal]] = []
    left = amount
    for grant_id, remainder in remainders:
        if left <= 0:
            break
        take = min(left, remainder)
        portions.append((grant_id, take))
        left -= take
    return portions


def transfer_legs(portions: Iterable[tuple[int, Decimal]], *, debit: int, credit: int) -> list[Leg]:
    legs: list[Leg] = []
    for grant_id, amount in portions:
        legs.append(Leg(debit, grant_id, -amount))
        legs.append(Leg(credit, grant_id, amount))
    return legs


def entry_post(
    *,
    type: str,
    legs: Sequence[Leg],
    actor: Actor = None,
    reason: str = "",
    metadata: dict[str, object] | None = None,
    idempotency_key: str | None = None,
    request_fingerprint: str = "",
) -> JournalEntry:
    """Write one entry with its lines and move the cached balances. The accounts must be locked."""
    entry = JournalEntry.objects.create(
        type=type,
        created_at=timezone.now(),
        actor_user=actor if isinstance(actor, User) else None,
        actor_token=actor if isinstance(actor, ServiceToken) else None,
        reason=reason,
        metadata=metadata or {},
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
    )
    legs = [leg for leg in legs if leg.amount != 0]
    # One statement for all lines: the zero-sum trigger checks the entry once, complete.
    JournalLine.objects.bulk_create(
        JournalLine(
            entry=entry, account_id=leg.account_id, grant_id=leg.grant_id, amount=leg.amount
        )
        for leg in legs
    )
    _balances_apply(legs)
    return entry


def _balances_apply(legs: Sequence[Leg]) -> None:
    by_account: dict[int, Decimal] = defaultdict(Decimal)
    by_grant: dict[tuple[int, int], Decimal] = defaultdict(Decimal)
    for leg in legs:
        by_account[leg.account_id] += leg.amount
        by_grant[(leg.account_id, leg.grant_id)] += leg.amount
    account_rows = [(pk, delta) for pk, delta in sorted(by_account.items()) if delta != 0]
    grant_rows = [(a, g, delta) for (a, g), delta in sorted(by_grant.items()) if delta != 0]
    account_table = LedgerAccount._meta.db_table
    grant_table = GrantBalance._meta.db_table
    with connection.cursor() as cursor:
        if account_rows:
            values = ", ".join(["(%s::bigint, %s::numeric)"] * len(account_rows))
            cursor.execute(
                f"UPDATE {account_table} AS a SET balance = a.balance + v.delta, "  # noqa: S608
                f"updated_at = now() FROM (VALUES {values}) AS v(id, delta) WHERE a.id = v.id",
                [x for row in account_rows for x in row],
            )
        if grant_rows:
            values = ", ".join(["(%s::bigint, %s::bigint, %s::numeric)"] * len(grant_rows))
            cursor.execute(
                f"INSERT INTO {grant_table} AS b (account_id, grant_id, balance) "  # noqa: S608
                f"VALUES {values} ON CONFLICT (account_id, grant_id) "
                "DO UPDATE SET balance = b.balance + EXCLUDED.balance",
                [x for row in grant_rows for x in row],
            )
