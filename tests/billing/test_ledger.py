"""Exact balances after every budget operation, burn order, expiry and void."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.services import lab_create, project_create
from billing import services
from billing.errors import BudgetError, GrantNotExpiredError, InsufficientFundsError
from billing.ledger import Leg, entry_post
from billing.models import AccountType, EntryType, GrantCategory, JournalEntry, LedgerAccount
from billing.selectors import grant_list, lab_balance, project_balances
from core.money import AmountError

D = Decimal


def balances(lab):
    state = lab_balance(lab)
    return {
        "lab": state.balance,
        **{p.project.name: (p.balance, p.reserved) for p in state.projects},
    }


def system_balance():
    return LedgerAccount.objects.get(type=AccountType.SYSTEM).balance


@pytest.fixture
def lab(cast):
    return cast.lab


@pytest.mark.django_db
def test_labs_and_projects_get_their_accounts_when_created(cast):
    assert LedgerAccount.objects.filter(type="vlab", lab=cast.lab).count() == 1
    assert LedgerAccount.objects.filter(project=cast.alpha).count() == 2  # budget + reservation
    assert LedgerAccount.objects.filter(type="sys").count() == 1


@pytest.mark.django_db
def test_top_up_assign_reverse_move_grant_and_deplete_exact_balances(lab, cast):
    services.lab_top_up(lab=lab, amount="1000.50")
    assert balances(lab) == {"lab": D("1000.50"), "Alpha": (0, 0), "Beta": (0, 0)}
    assert system_balance() == D("-1000.50")

    services.budget_assign(lab=lab, project=cast.alpha, amount="400.25")
    services.budget_assign(lab=lab, project=cast.beta, amount="100")
    services.budget_reverse(lab=lab, project=cast.alpha, amount="0.25")
    services.budget_move(lab=lab, debited=cast.alpha, credited=cast.beta, amount="50")
    assert balances(lab) == {"lab": D("500.50"), "Alpha": (D("350"), 0), "Beta": (D("150"), 0)}

    services.budget_grant(project=cast.beta, amount="25.000001")
    assert balances(lab)["Beta"] == (D("175.000001"), 0)
    assert balances(lab)["lab"] == D("500.50")  # unchanged in net

    assert services.project_deplete(project=cast.alpha) == D("350")
    assert services.lab_deplete(lab=lab) == D("675.500001")
    assert services.lab_deplete(lab=lab) == D("0")  # nothing left: a no-op
    assert balances(lab) == {"lab": 0, "Alpha": (0, 0), "Beta": (0, 0)}
    assert system_balance() == 0


@pytest.mark.django_db
def test_deplete_leaves_held_money_alone(lab, cast):
    services.budget_grant(project=cast.alpha, amount="100")
    services.hold_create(project=cast.alpha, amount="30", job_uuid=uuid.uuid4())
    assert services.project_deplete(project=cast.alpha) == D("70")
    assert balances(lab)["Alpha"] == (0, D("30"))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("operation", "message"),
    [
        (lambda c: services.budget_assign(lab=c.lab, project=c.alpha, amount="1"),
         "Insufficient funds in the virtual-lab account"),
        (lambda c: services.budget_reverse(lab=c.lab, project=c.alpha, amount="1"),
         "Insufficient funds in the project account"),
        (lambda c: services.budget_move(lab=c.lab, debited=c.alpha, credited=c.beta, amount="1"),
         "Insufficient funds in the debited account"),
        (lambda c: services.budget_move(lab=c.lab, debited=c.alpha, credited=c.alpha, amount="1"),
         "The debited and credited accounts must be different"),
        (lambda c: services.budget_assign(
            lab=c.lab, project=c.charlie_lab.projects.get(), amount="1"),
         "The project doesn't belong to the virtual-lab"),
        (lambda c: services.budget_move(
            lab=c.lab, debited=c.charlie_lab.projects.get(), credited=c.beta, amount="1"),
         "The debited project doesn't belong to the virtual-lab"),
        (lambda c: services.budget_move(
            lab=c.lab, debited=c.alpha, credited=c.charlie_lab.projects.get(), amount="1"),
         "The credited project doesn't belong to the virtual-lab"),
    ],
)  # fmt: skip
def test_budget_rules_refuse_and_write_nothing(cast, operation, message):
    before = JournalEntry.objects.count()
    with pytest.raises(BudgetError, match=message):
        operation(cast)
    assert JournalEntry.objects.count() == before


@pytest.mark.django_db
@pytest.mark.parametrize("amount", ["0", "-5", "abc", "1.0000001", "NaN", "Infinity", "1e30", True])
def test_bad_amounts_are_refused_before_anything_is_written(lab, amount):
    with pytest.raises(AmountError):
        services.lab_top_up(lab=lab, amount=amount)
    assert JournalEntry.objects.count() == 0


@pytest.mark.django_db
def test_reserving_more_than_the_project_has_is_402(cast):
    services.budget_grant(project=cast.alpha, amount="10")
    with pytest.raises(InsufficientFundsError) as raised:
        services.hold_create(project=cast.alpha, amount="10.000001", job_uuid=uuid.uuid4())
    assert raised.value.details == {"requested_amount": "10.000001"}


@pytest.mark.django_db
def test_burn_order_priority_then_soonest_expiry_then_oldest(lab, cast):
    now = timezone.now()
    paid_old = services.lab_top_up(lab=lab, amount="10")
    paid_new = services.lab_top_up(lab=lab, amount="10")
    paid_expiring = services.lab_top_up(lab=lab, amount="10", expires_at=now + timedelta(days=5))
    promo_late = services.lab_top_up(
        lab=lab, amount="10", category=GrantCategory.PROMOTIONAL, expires_at=now + timedelta(days=9)
    )
    promo_soon = services.lab_top_up(
        lab=lab, amount="10", category=GrantCategory.PROMOTIONAL, expires_at=now + timedelta(days=2)
    )
    services.budget_assign(lab=lab, project=cast.alpha, amount="45")
    left_in_lab = {row.grant.pk: row.in_lab for row in grant_list(actor=cast.alice, lab=lab)}
    # Promotional first (soonest expiry first), then paid: expiring first, then the oldest.
    assert left_in_lab == {
        promo_soon.pk: 0,
        promo_late.pk: 0,
        paid_expiring.pk: 0,
        paid_old.pk: 0,
        paid_new.pk: D("5"),
    }
    assert [row.grant.pk for row in grant_list(actor=cast.alice, lab=lab)] == [
        promo_soon.pk, promo_late.pk, paid_expiring.pk, paid_old.pk, paid_new.pk
    ]  # fmt: skip


@pytest.mark.django_db
def test_a_future_grant_is_not_spendable_until_it_takes_effect(lab, cast):
    start = timezone.now() + timedelta(days=1)
    services.lab_top_up(lab=lab, amount="50", effective_at=start)
    state = lab_balance(lab)
    assert (state.balance, state.spendable) == (D("50"), D("0"))
    with pytest.raises(BudgetError, match="Insufficient funds"):
        services.budget_assign(lab=lab, project=cast.alpha, amount="1")
    with time_machine.travel(start + timedelta(seconds=1)):
        services.budget_assign(lab=lab, project=cast.alpha, amount="50")
    assert balances(lab)["Alpha"] == (D("50"), 0)


@pytest.mark.django_db
def test_grant_expiry_takes_back_lab_and_project_money_but_not_held_money(lab, cast):
    expires = timezone.now() + timedelta(days=30)
    grant = services.lab_top_up(lab=lab, amount="100", expires_at=expires)
    services.lab_top_up(lab=lab, amount="7")  # a second grant that does not expire
    services.budget_assign(lab=lab, project=cast.alpha, amount="40")
    services.budget_assign(lab=lab, project=cast.beta, amount="25")
    job = uuid.uuid4()
    services.hold_create(project=cast.alpha, amount="15", job_uuid=job)
    assert balances(lab) == {"lab": D("42"), "Alpha": (D("25"), D("15")), "Beta": (D("25"), 0)}

    with pytest.raises(GrantNotExpiredError):
        services.grant_expire(grant=grant)
    with time_machine.travel(expires + timedelta(seconds=1)):
        taken = services.grant_expire(grant=grant)
        # 35 left in the lab (42 - the 7 of the other grant), 25 in Alpha, 25 in Beta.
        assert taken == D("85")
        assert balances(lab) == {"lab": D("7"), "Alpha": (0, D("15")), "Beta": (0, 0)}
        assert services.grant_expire(grant=grant) == 0  # again: nothing more to take
        # The reservation is released later ...
        assert services.hold_release(project=cast.alpha, job_uuid=job) == D("15")
        assert services.hold_release(project=cast.alpha, job_uuid=job) == 0  # nothing left
        # ... and the expired part goes to the system account, not back into the project.
        assert balances(lab)["Alpha"] == (0, 0)
        assert services.grant_expire(grant=grant) == 0
    assert JournalEntry.objects.filter(type=EntryType.EXPIRE).count() == 1


@pytest.mark.django_db
def test_void_returns_the_remainder_and_records_who(lab, cast):
    grant = services.lab_top_up(lab=lab, amount="60")
    services.budget_assign(lab=lab, project=cast.alpha, amount="20")
    assert services.grant_void(grant=grant, actor=cast.alice, reason="chargeback") == D("60")
    assert services.grant_void(grant=grant, actor=cast.alice) == 0
    grant.refresh_from_db()
    assert grant.voided_at is not None
    entry = JournalEntry.objects.get(type=EntryType.VOID)
    assert (entry.actor_user, entry.reason) == (cast.alice, "chargeback")
    assert balances(lab) == {"lab": 0, "Alpha": (0, 0), "Beta": (0, 0)}


@pytest.mark.django_db
def test_idempotency_key_replays_the_first_result(lab, cast):
    first = services.lab_top_up(lab=lab, amount="10", idempotency_key="stripe:cs_1")
    again = services.lab_top_up(lab=lab, amount="10", idempotency_key="stripe:cs_1")
    assert again == first
    assert balances(lab)["lab"] == D("10")
    entry = services.budget_assign(lab=lab, project=cast.alpha, amount="4", idempotency_key="a1")
    assert (
        services.budget_assign(lab=lab, project=cast.alpha, amount="4", idempotency_key="a1")
        == entry
    )
    assert balances(lab)["Alpha"] == (D("4"), 0)


@pytest.mark.django_db
def test_reusing_a_key_for_another_request_is_a_conflict(lab, cast):
    from billing.errors import IdempotencyConflictError

    services.lab_top_up(lab=lab, amount="10", idempotency_key="k")
    with pytest.raises(IdempotencyConflictError):
        services.lab_top_up(lab=lab, amount="11", idempotency_key="k")
    with pytest.raises(IdempotencyConflictError):
        services.budget_assign(lab=lab, project=cast.alpha, amount="1", idempotency_key="k")
    assert balances(lab) == {"lab": D("10"), "Alpha": (0, 0), "Beta": (0, 0)}


@pytest.mark.django_db
@pytest.mark.ledger_broken_on_purpose
def test_the_database_refuses_an_unbalanced_entry_and_edits(lab):
    services.lab_top_up(lab=lab, amount="10")
    entry = JournalEntry.objects.get()
    line = entry.lines.first()
    with pytest.raises(IntegrityError, match="does not sum to zero"), transaction.atomic():
        entry.lines.model.objects.create(
            entry=entry, account=line.account, grant=line.grant, amount=D("1")
        )
    with pytest.raises(IntegrityError, match="does not sum to zero"), transaction.atomic():
        entry_post(type=EntryType.TOP_UP, legs=[Leg(line.account_id, line.grant_id, D("5"))])
    with (
        pytest.raises(IntegrityError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("UPDATE billing_journalline SET amount = amount * 2")
    with pytest.raises(IntegrityError), transaction.atomic():
        LedgerAccount.objects.filter(type="vlab", lab=lab).update(balance=D("-1"))


@pytest.mark.django_db
@pytest.mark.ledger_broken_on_purpose
def test_audit_names_a_cached_balance_that_drifted(lab):
    from billing.audit import ledger_audit

    services.lab_top_up(lab=lab, amount="10")
    assert ledger_audit() == []
    LedgerAccount.objects.filter(type="vlab", lab=lab).update(balance=D("11"))
    problems = ledger_audit()
    assert any("caches balance 11.000000 but its lines sum to 10.000000" in p for p in problems)
    assert any("all balances sum to 1.000000" in p for p in problems)


@pytest.mark.django_db
def test_ledger_audit_command_passes_on_a_sound_ledger(lab, capsys):
    from django.core.management import call_command

    services.lab_top_up(lab=lab, amount="10")
    call_command("ledger_audit")
    assert "every invariant holds" in capsys.readouterr().out


@pytest.mark.django_db
def test_project_balances_for_a_new_project_are_zero(lab):
    project = project_create(lab=lab_create(name="Empty"), name="P")
    assert project_balances([project])[0].balance == 0


@pytest.mark.django_db
def test_lab_activity_shows_every_movement_on_the_lab_and_its_projects_to_members_only(cast):
    from accounts.errors import LabNotFoundError
    from billing.selectors import lab_activity
    from metering.reservations import reservation_create
    from tests.metering.test_reservations import priced_service

    services.lab_top_up(lab=cast.lab, amount="9", actor=cast.alice)
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="4", actor=cast.alice)
    services.budget_move(
        lab=cast.lab, debited=cast.alpha, credited=cast.beta, amount="1.5", actor=cast.bob
    )
    services.budget_grant(project=cast.beta, amount="2", category="promotional", source="operator")
    llm = priced_service()
    reservation_create(project=cast.alpha, service=llm, quantity=1000, params={"count": 1000})
    rows = [
        (row.what, row.amount, row.moved, row.entry.actor_user)
        for row in lab_activity(actor=cast.bob, lab=cast.lab)
    ]
    assert rows == [
        ("Grant budget · Operator, promotional", D("2"), "outside → Beta", None),
        ("Move budget", D("1.5"), "Alpha → Beta", cast.bob),
        ("Assign budget", D("4"), "Lab account → Alpha", cast.alice),
        ("Top-up · API", D("9"), "outside → Lab account", cast.alice),
    ]  # the reservation's hold is on the usage pages
    assert len(lab_activity(actor=cast.alice, lab=cast.lab, limit=2)) == 2
    with pytest.raises(LabNotFoundError):
        lab_activity(actor=cast.charlie, lab=cast.lab)
