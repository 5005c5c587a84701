"""Every money movement. Each service is keyword-only, runs in one transaction, and takes an
optional idempotency key: a replay with the same key returns the first result and moves nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid as uuid_lib
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Lab, Project, User
from billing import recharge_trigger
from billing.errors import (
    BudgetError,
    BudgetShortfallError,
    GrantNotExpiredError,
    IdempotencyConflictError,
    InsufficientFundsError,
)
from billing.ledger import (
    SYSTEM,
    AccountRef,
    Actor,
    Leg,
    accounts_lock,
    entry_post,
    lab_ref,
    project_ref,
    reservation_ref,
    transfer,
    transfer_legs,
)
from billing.models import (
    DEFAULT_PRIORITY,
    AccountType,
    EntryType,
    Grant,
    GrantBalance,
    GrantCategory,
    GrantSource,
    JournalEntry,
    JournalLine,
    LedgerAccount,
)
from core.money import credits_parse, credits_quantize

T = TypeVar("T")


# Accounts ------------------------------------------------------------------------------------


def system_account_get_or_create() -> LedgerAccount:
    """The system account has id 0, below every other account, so locking in id order always
    takes it first; the migration creates it, this recreates it after a test flush."""
    account, _ = LedgerAccount.objects.get_or_create(
        type=AccountType.SYSTEM,
        defaults={
            "id": LedgerAccount.SYSTEM_ID,
            "uuid": LedgerAccount.UNCLAIMED_SYSTEM_UUID,
            "name": "System",
        },
    )
    return account


def lab_account_open(*, lab: Lab) -> LedgerAccount:
    account, _ = LedgerAccount.objects.get_or_create(
        type=AccountType.LAB, lab=lab, defaults={"name": lab.name}
    )
    return account


def project_accounts_open(*, project: Project) -> tuple[LedgerAccount, LedgerAccount]:
    """A project's budget account and its reservation account, created together."""
    budget, _ = LedgerAccount.objects.get_or_create(
        type=AccountType.PROJECT,
        project=project,
        defaults={"lab_id": project.lab_id, "name": project.name},
    )
    reservation, _ = LedgerAccount.objects.get_or_create(
        type=AccountType.RESERVATION,
        project=project,
        defaults={"lab_id": project.lab_id, "name": _account_name(project.name, "/RESERVATION")},
    )
    return budget, reservation


def _account_name(name: str, suffix: str) -> str:
    """`name` + `suffix`, the name cut to fit the column (a project's may use all of its own)."""
    room = LedgerAccount._meta.get_field("name").max_length - len(suffix)
    return f"{name[:room]}{suffix}"


# Idempotency ---------------------------------------------------------------------------------


def request_fingerprint(operation: str, **params: object) -> str:
    """Equal requests give equal fingerprints: 1, "1.0" and "1.000000" are one amount."""

    def plain(value: object) -> str:
        return str(credits_quantize(value)) if isinstance(value, Decimal) else str(value)

    payload = json.dumps([operation, params], sort_keys=True, default=plain)
    return hashlib.sha256(payload.encode()).hexdigest()


def _once(
    key: str | None,
    fingerprint: str,
    run: Callable[[], T],
    replay: Callable[[JournalEntry], T],
    *,
    commits_itself: bool = False,
) -> T:
    """Run `run` in a transaction; with a key, a second call returns `replay(first entry)`.

    The key is stored on the entry in the same transaction as the movement, so a crash leaves
    neither; concurrent calls with one key serialize on its unique index and all but one replay.
    `commits_itself`: `run` is one round trip that the server commits as one transaction when
    no transaction is open (ledger.transfer), so it needs an atomic block only inside one: a
    savepoint, so that a lost race for the key can still be replayed.
    """
    if key is not None:
        first = JournalEntry.objects.filter(idempotency_key=key).first()
        if first is not None:
            return _replayed(first, fingerprint, replay)
    own_transaction = commits_itself and transaction.get_autocommit()
    try:
        with contextlib.nullcontext() if own_transaction else transaction.atomic():
            return run()
    except IntegrityError:
        first = JournalEntry.objects.filter(idempotency_key=key).first() if key else None
        if first is None:
            raise
        return _replayed(first, fingerprint, replay)


def _replayed(first: JournalEntry, fingerprint: str, replay: Callable[[JournalEntry], T]) -> T:
    if first.request_fingerprint != fingerprint:
        raise IdempotencyConflictError()
    return replay(first)


def _entry_grant(entry: JournalEntry) -> Grant:
    return Grant.objects.get(lines__entry=entry, lines__amount__gt=0)


# Top-ups and grants --------------------------------------------------------------------------


def _grant_new(
    *,
    lab: Lab,
    amount: Decimal,
    category: str,
    priority: int | None,
    effective_at: datetime | None,
    expires_at: datetime | None,
    source: str,
    source_ref: str,
    reason: str,
    metadata: dict[str, object] | None,
    actor: Actor,
) -> Grant:
    effective_at = effective_at or timezone.now()
    if expires_at is not None and expires_at <= effective_at:
        raise BudgetError("The expiry must be after the grant takes effect")
    return Grant.objects.create(
        lab=lab,
        amount=amount,
        category=category,
        priority=DEFAULT_PRIORITY[GrantCategory(category)] if priority is None else priority,
        effective_at=effective_at,
        expires_at=expires_at,
        source=source,
        source_ref=source_ref,
        reason=reason,
        metadata=metadata or {},
        created_by=actor if isinstance(actor, User) else None,
    )


def lab_top_up(
    *,
    lab: Lab,
    amount: Decimal | str,
    category: str = GrantCategory.PAID,
    priority: int | None = None,
    effective_at: datetime | None = None,
    expires_at: datetime | None = None,
    source: str = GrantSource.API,
    source_ref: str = "",
    reason: str = "",
    metadata: dict[str, object] | None = None,
    actor: Actor = None,
    idempotency_key: str | None = None,
) -> Grant:
    """Credits enter a lab from the system account as a new grant."""
    amount = credits_parse(amount)
    fingerprint = request_fingerprint(
        "top-up", lab=lab.pk, amount=amount, category=category, expires_at=expires_at
    )

    def run() -> Grant:
        grant = _grant_new(
            lab=lab,
            amount=amount,
            category=category,
            priority=priority,
            effective_at=effective_at,
            expires_at=expires_at,
            source=source,
            source_ref=source_ref,
            reason=reason,
            metadata=metadata,
            actor=actor,
        )
        system_account_get_or_create()
        system, lab_account = accounts_lock(SYSTEM, lab_ref(lab))
        entry_post(
            type=EntryType.TOP_UP,
            legs=transfer_legs([(grant.pk, amount)], debit=system.pk, credit=lab_account.pk),
            actor=actor,
            reason=reason,
            metadata=metadata,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
        )
        return grant

    return _once(idempotency_key, fingerprint, run, _entry_grant)


def budget_grant(
    *,
    project: Project,
    amount: Decimal | str,
    category: str = GrantCategory.PAID,
    priority: int | None = None,
    effective_at: datetime | None = None,
    expires_at: datetime | None = None,
    source: str = GrantSource.API,
    source_ref: str = "",
    reason: str = "",
    metadata: dict[str, object] | None = None,
    actor: Actor = None,
    idempotency_key: str | None = None,
) -> Grant:
    """Top up a project's lab and assign it all to the project, in one entry."""
    amount = credits_parse(amount)
    fingerprint = request_fingerprint("grant", project=project.pk, amount=amount, category=category)

    def run() -> Grant:
        grant = _grant_new(
            lab=project.lab,
            amount=amount,
            category=category,
            priority=priority,
            effective_at=effective_at,
            expires_at=expires_at,
            source=source,
            source_ref=source_ref,
            reason=reason,
            metadata=metadata,
            actor=actor,
        )
        system_account_get_or_create()
        system, budget = accounts_lock(SYSTEM, project_ref(project))
        entry_post(
            type=EntryType.GRANT,
            legs=transfer_legs([(grant.pk, amount)], debit=system.pk, credit=budget.pk),
            actor=actor,
            reason=reason,
            metadata=metadata,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
        )
        return grant

    return _once(idempotency_key, fingerprint, run, _entry_grant)


# Moves between two accounts of one lab -------------------------------------------------------


def _transfer(
    *,
    type: str,
    debit: AccountRef,
    credit: AccountRef,
    amount: Decimal,
    shortfall: Callable[[], Exception],
    spendable_only: bool,
    actor: Actor,
    reason: str,
    idempotency_key: str | None,
    fingerprint: str,
    job_uuid: uuid_lib.UUID | None = None,
) -> JournalEntry:
    """Move `amount` from one account to another, grant by grant in burn order."""
    entry = transfer(
        type=type,
        debit=debit,
        credit=credit,
        amount=amount,
        spendable_only=spendable_only,
        actor=actor,
        reason=reason,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
        job_uuid=job_uuid,
    )
    if entry is None:
        raise shortfall()
    recharge_trigger.debited((debit,))
    return entry


def _in_lab(project: Project, lab: Lab, message: str) -> None:
    if project.lab_id != lab.pk:
        raise BudgetError(message)


def _transfer_once(
    operation: str,
    *,
    type: str,
    debit: AccountRef,
    credit: AccountRef,
    amount: Decimal,
    shortfall: Callable[[], Exception],
    spendable_only: bool = True,
    actor: Actor,
    reason: str,
    idempotency_key: str | None,
    job_uuid: uuid_lib.UUID | None = None,
) -> JournalEntry:
    fingerprint = request_fingerprint(
        operation, debit=debit, credit=credit, amount=amount, job=job_uuid
    )
    return _once(
        idempotency_key,
        fingerprint,
        lambda: _transfer(
            type=type,
            debit=debit,
            credit=credit,
            amount=amount,
            shortfall=shortfall,
            spendable_only=spendable_only,
            actor=actor,
            reason=reason,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            job_uuid=job_uuid,
        ),
        lambda entry: entry,
        commits_itself=True,
    )


def budget_assign(
    *,
    lab: Lab,
    project: Project,
    amount: Decimal | str,
    actor: Actor = None,
    reason: str = "",
    idempotency_key: str | None = None,
) -> JournalEntry:
    """Lab → project."""
    amount = credits_parse(amount)
    _in_lab(project, lab, "The project doesn't belong to the virtual-lab")
    return _transfer_once(
        "assign",
        type=EntryType.ASSIGN,
        debit=lab_ref(lab),
        credit=project_ref(project),
        amount=amount,
        shortfall=lambda: BudgetShortfallError("Insufficient funds in the virtual-lab account"),
        actor=actor,
        reason=reason,
        idempotency_key=idempotency_key,
    )


def budget_reverse(
    *,
    lab: Lab,
    project: Project,
    amount: Decimal | str,
    actor: Actor = None,
    reason: str = "",
    idempotency_key: str | None = None,
) -> JournalEntry:
    """Project → lab."""
    amount = credits_parse(amount)
    _in_lab(project, lab, "The project doesn't belong to the virtual-lab")
    return _transfer_once(
        "reverse",
        type=EntryType.REVERSE,
        debit=project_ref(project),
        credit=lab_ref(lab),
        amount=amount,
        shortfall=lambda: BudgetShortfallError("Insufficient funds in the project account"),
        actor=actor,
        reason=reason,
        idempotency_key=idempotency_key,
    )


def budget_move(
    *,
    lab: Lab,
    debited: Project,
    credited: Project,
    amount: Decimal | str,
    actor: Actor = None,
    reason: str = "",
    idempotency_key: str | None = None,
) -> JournalEntry:
    """Project → another project of the same lab."""
    amount = credits_parse(amount)
    if debited.pk == credited.pk:
        raise BudgetError("The debited and credited accounts must be different")
    _in_lab(debited, lab, "The debited project doesn't belong to the virtual-lab")
    _in_lab(credited, lab, "The credited project doesn't belong to the virtual-lab")
    return _transfer_once(
        "move",
        type=EntryType.MOVE,
        debit=project_ref(debited),
        credit=project_ref(credited),
        amount=amount,
        shortfall=lambda: BudgetShortfallError("Insufficient funds in the debited account"),
        actor=actor,
        reason=reason,
        idempotency_key=idempotency_key,
    )


# Holds: the ledger side of reservations (jobs live in metering) ------------------------------


def hold_create(
    *,
    project: Project,
    amount: Decimal | str,
    job_uuid: uuid_lib.UUID,
    actor: Actor = None,
    idempotency_key: str | None = None,
) -> JournalEntry:
    """Hold credits for a job: project → its reservation account, spendable grants in burn
    order. 402 INSUFFICIENT_FUNDS when the project cannot cover it; equality is allowed."""
    amount = credits_parse(amount)
    return _transfer_once(
        "reserve",
        type=EntryType.RESERVE,
        debit=project_ref(project),
        credit=reservation_ref(project),
        amount=amount,
        shortfall=lambda: InsufficientFundsError(
            "Reservation not allowed because of insufficient funds", requested_amount=amount
        ),
        actor=actor,
        reason="",
        idempotency_key=idempotency_key,
        job_uuid=job_uuid,
    )


def _job_held_by_grant(
    reservation: LedgerAccount, job_uuid: uuid_lib.UUID
) -> list[tuple[int, Decimal, bool]]:
    """(grant id, amount still held for the job, whether the grant is still spendable)."""
    now = timezone.now()
    rows = (
        JournalLine.objects.filter(account=reservation, entry__job_uuid=job_uuid)
        .values("grant_id", "grant__expires_at", "grant__expired_at", "grant__voided_at")
        .annotate(held=Sum("amount"))
        .filter(held__gt=0)
        .order_by("grant_id")
    )
    return [
        (
            row["grant_id"],
            row["held"],
            row["grant__voided_at"] is None
            and row["grant__expired_at"] is None
            and (row["grant__expires_at"] is None or row["grant__expires_at"] > now),
        )
        for row in rows
    ]


@transaction.atomic
def hold_release(
    *, project: Project, job_uuid: uuid_lib.UUID, actor: Actor = None, reason: str = ""
) -> Decimal:
    """Give back everything still held for a job, grant by grant: to the project, or, for a
    grant that expired or was voided meanwhile, straight to the system account (that money
    must not come back to life). Returns the amount; 0, writing nothing, when nothing is held."""
    system_account_get_or_create()
    system, budget, reservation = accounts_lock(
        SYSTEM, project_ref(project), reservation_ref(project)
    )
    held = _job_held_by_grant(reservation, job_uuid)
    if not held:
        return Decimal(0)
    legs: list[Leg] = []
    for grant_id, amount, spendable in held:
        target = budget if spendable else system
        legs += [Leg(reservation.pk, grant_id, -amount), Leg(target.pk, grant_id, amount)]
    entry_post(
        type=EntryType.RELEASE,
        legs=legs,
        actor=actor,
        reason=reason,
        job_uuid=job_uuid,
        metadata={"reason": reason} if reason else None,
    )
    return sum((amount for _, amount, _ in held), Decimal(0))


# Money back to the system account ------------------------------------------------------------


def _sweep(
    *,
    type: str,
    accounts: list[LedgerAccount],
    system: LedgerAccount,
    grant: Grant | None,
    actor: Actor,
    reason: str,
    metadata: dict[str, object] | None = None,
) -> Decimal:
    """Return every positive grant remainder of the locked accounts to the system account
    (only `grant`'s, if given), as one entry. Returns the total.

    Never more than an account's balance: in a project in debt (a negative remainder on one
    grant, from usage overshoot), the positive remainders of other grants cover that debt, and
    taking them would put the project back below zero."""
    rows = GrantBalance.objects.filter(account__in=accounts, balance__gt=0)
    if grant is not None:
        rows = rows.filter(grant=grant)
    left = {account.pk: max(account.balance, Decimal(0)) for account in accounts}
    legs: list[Leg] = []
    total = Decimal(0)
    for account_id, grant_id, balance in rows.order_by("account_id", "grant_id").values_list(
        "account_id", "grant_id", "balance"
    ):
        taken = min(balance, left[account_id])
        if taken <= 0:
            continue
        left[account_id] -= taken
        legs += [Leg(account_id, grant_id, -taken), Leg(system.pk, grant_id, taken)]
        total += taken
    if legs:
        entry_post(type=type, legs=legs, actor=actor, reason=reason, metadata=metadata)
    return total


@transaction.atomic
def project_deplete(*, project: Project, actor: Actor = None, reason: str = "") -> Decimal:
    """All of a project's budget goes back to the system account; held money stays held."""
    system_account_get_or_create()
    system, budget = accounts_lock(SYSTEM, project_ref(project))
    return _sweep(
        type=EntryType.DEPLETE,
        accounts=[budget],
        system=system,
        grant=None,
        actor=actor,
        reason=reason,
        metadata={"reason": "deplete_project"},
    )


def lab_accounts_lock(lab: Lab) -> tuple[LedgerAccount, list[LedgerAccount]]:
    """Lock the system account and the lab's account, then every project account of the lab.
    Ids rise in that order (system 0, a lab before its projects), so this keeps the global
    id order; and with the lab and system locked, no project of the lab gains money unseen."""
    system_account_get_or_create()
    system, lab_account = accounts_lock(SYSTEM, lab_ref(lab))
    project_ids = list(lab.projects.values_list("pk", flat=True))
    budgets = accounts_lock(*(AccountRef(AccountType.PROJECT, pk) for pk in project_ids))
    return system, [lab_account, *budgets]


@transaction.atomic
def lab_deplete(*, lab: Lab, actor: Actor = None, reason: str = "") -> Decimal:
    """The lab's balance and every project budget of the lab go back to the system account."""
    system, owned = lab_accounts_lock(lab)
    return _sweep(
        type=EntryType.DEPLETE,
        accounts=owned,
        system=system,
        grant=None,
        actor=actor,
        reason=reason,
        metadata={"reason": "deplete_vlab"},
    )


def _grant_sweep(*, grant: Grant, type: str, actor: Actor, reason: str) -> Decimal:
    """What is left of a grant in its lab and project accounts goes back to the system account.
    Money held by open reservations stays: the job it is held for may still use it; when the
    hold is released, hold_release returns that part to the system account itself."""
    system, owned = lab_accounts_lock(grant.lab)
    return _sweep(type=type, accounts=owned, system=system, grant=grant, actor=actor, reason=reason)


@transaction.atomic
def grant_expire(*, grant: Grant, actor: Actor = None) -> Decimal:
    """Expire a grant past its expiry. Safe to run again: later calls sweep what reservations
    released since, and move nothing when nothing is left."""
    # NO KEY: commits of lines that reference this grant take key-share locks on it.
    grant = (
        Grant.objects.select_for_update(no_key=True, of=("self",))
        .select_related("lab")
        .get(pk=grant.pk)
    )
    now = timezone.now()
    if grant.expires_at is None or grant.expires_at > now:
        raise GrantNotExpiredError()
    if grant.expired_at is None:
        grant.expired_at = now
        grant.save(update_fields=["expired_at", "updated_at"])
    return _grant_sweep(grant=grant, type=EntryType.EXPIRE, actor=actor, reason="")


@transaction.atomic
def grant_void(*, grant: Grant, actor: Actor = None, reason: str = "") -> Decimal:
    """Void a grant: its remainder in the lab and projects goes back to the system account."""
    # NO KEY: commits of lines that reference this grant take key-share locks on it.
    grant = (
        Grant.objects.select_for_update(no_key=True, of=("self",))
        .select_related("lab")
        .get(pk=grant.pk)
    )
    if grant.voided_at is None:
        grant.voided_at = timezone.now()
        grant.save(update_fields=["voided_at", "updated_at"])
    return _grant_sweep(grant=grant, type=EntryType.VOID, actor=actor, reason=reason)
