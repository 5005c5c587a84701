"""Real threads against the real database: no deadlock, no lost update, no double credit."""

import random
import threading
from decimal import Decimal

import pytest
from django.db import connection

from accounts.services import lab_create, project_create
from billing import services
from billing.audit import ledger_audit
from billing.errors import BudgetError
from billing.models import EntryType, Grant, JournalEntry, TopUp, TopUpStatus
from billing.selectors import lab_balance

pytestmark = pytest.mark.django_db(transaction=True)


def run_threads(count, work):
    errors = []
    barrier = threading.Barrier(count)

    def target(index):
        try:
            barrier.wait()
            work(index)
        except Exception as exc:  # collected and failed on below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def test_fifty_threads_assign_reverse_and_move_without_deadlock_or_lost_update():
    lab = lab_create(name="Busy lab")
    projects = [project_create(lab=lab, name=f"P{i}") for i in range(3)]
    services.lab_top_up(lab=lab, amount="1000")
    refused = []

    def work(index):
        rng = random.Random(index)
        for _ in range(6):
            a, b = rng.sample(projects, 2)
            amount = Decimal(rng.randint(1, 4000)) / 100
            try:
                match rng.choice(["assign", "reverse", "move"]):
                    case "assign":
                        services.budget_assign(lab=lab, project=a, amount=amount)
                    case "reverse":
                        services.budget_reverse(lab=lab, project=a, amount=amount)
                    case "move":
                        services.budget_move(lab=lab, debited=a, credited=b, amount=amount)
            except BudgetError:
                refused.append(amount)  # insufficient funds is a fine answer under contention

    assert run_threads(50, work) == []
    state = lab_balance(lab)
    assert state.balance >= 0 and all(p.balance >= 0 for p in state.projects)
    assert state.balance + sum(p.balance for p in state.projects) == Decimal("1000")
    moves = JournalEntry.objects.filter(
        type__in=[EntryType.ASSIGN, EntryType.REVERSE, EntryType.MOVE]
    ).count()
    assert moves + len(refused) == 300
    assert moves > 0
    assert ledger_audit() == []


def test_the_same_top_up_sent_twenty_times_at_once_credits_once():
    lab = lab_create(name="Stripe lab")
    grants = []

    def work(index):
        grants.append(services.lab_top_up(lab=lab, amount="25", idempotency_key="stripe:cs_42"))

    assert run_threads(20, work) == []
    assert len({grant.pk for grant in grants}) == 1
    assert Grant.objects.filter(lab=lab).count() == 1
    assert JournalEntry.objects.filter(type=EntryType.TOP_UP).count() == 1
    assert lab_balance(lab).balance == Decimal("25")
    assert ledger_audit() == []


def test_a_project_top_up_refunded_before_it_was_paid_races_budget_moves_without_deadlock(
    cast, stripe_fake
):
    """Its payment grants the project's budget, then takes the refund back from the whole lab
    (lab_accounts_lock): the lab's account must be locked first, as budget moves lock it."""
    from django.test import Client

    from tests.billing import stripe_fake as fake
    from tests.billing.test_stripe_webhook import start

    services.lab_top_up(lab=cast.lab, amount="5000")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="500")
    paid = threading.Event()

    def work(index):
        if index == 0:
            client = Client()
            for _ in range(15):
                topup = start(cast, amount="20", project=cast.alpha)
                intent = f"pi_{topup.uuid.hex[:12]}"
                stripe_fake.put(fake.session(topup, intent=intent))
                charge = fake.charge(
                    topup, refunded_minor=500, intent=intent, charge_id=f"ch_{topup.uuid.hex[:12]}"
                )
                fake.deliver(client, fake.event("charge.refunded", stripe_fake.put(charge)))
                completed = fake.event(
                    "checkout.session.completed", fake.session(topup, intent=intent)
                )
                assert fake.deliver(client, completed).status_code == 200
            paid.set()
            return
        n = 0
        while not paid.is_set():
            n += 1
            if (n + index) % 2:
                services.budget_assign(lab=cast.lab, project=cast.alpha, amount="0.01")
            else:
                services.budget_reverse(lab=cast.lab, project=cast.alpha, amount="0.01")

    assert run_threads(4, work) == []
    assert set(TopUp.objects.values_list("status", flat=True)) == {TopUpStatus.PAID}
    assert ledger_audit() == []
