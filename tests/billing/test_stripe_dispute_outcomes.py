"""Disputes after they open: an inquiry takes nothing; a dispute won gives back what it took
(the open debt forgiven, the credits returned to where the top-up put them); an older copy of
a closed dispute changes nothing."""

import io
import logging
import threading
import uuid
from datetime import timedelta
from decimal import Decimal
from unittest import mock

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.test import Client

from billing import services, topups
from billing.audit import ledger_audit
from billing.charges import usage_charge
from billing.models import EntryType, Grant, JournalEntry, LabDebt, TopUp
from billing.selectors import lab_balance, lab_debt
from billing.stripe_gateway import Dispute
from billing.sweeps import grants_expire
from tests.billing import stripe_fake as sf
from tests.billing.test_stripe_refunds import balances, paid
from tests.billing.test_stripe_webhook import start

pytestmark = pytest.mark.django_db


def dispute_event(
    client, fake, topup, type, status, amount_minor=None, dispute_id="dp_test_1", refunded_minor=0
):
    """Stripe's dispute and its charge as they are now (what the handler re-reads), and an
    event about the dispute."""
    fake.put(sf.charge(topup, refunded_minor=refunded_minor, intent=topup.stripe_payment_intent_id))
    dispute = fake.put(
        sf.dispute(
            topup,
            amount_minor=topup.amount_minor if amount_minor is None else amount_minor,
            intent=topup.stripe_payment_intent_id,
            status=status,
            dispute_id=dispute_id,
        )
    )
    response = sf.deliver(client, sf.event(f"charge.dispute.{type}", dispute))
    assert response.status_code == 200
    topup.refresh_from_db()
    return response


def billing_page(client, cast) -> str:
    client.force_login(cast.alice)
    response = client.get(f"/app/labs/{cast.lab.uuid}/billing/")
    assert response.status_code == 200
    return response.content.decode()


def spent_then_disputed(client, fake, cast) -> TopUp:
    """100 credits bought, 100 assigned to Beta, 25 of them spent, then the payment disputed:
    the 75 left are taken back and the 25 spent are the lab's debt."""
    topup = paid(client, fake, cast, amount="100")
    services.budget_assign(lab=cast.lab, project=cast.beta, amount="100")
    usage_charge(project=cast.beta, amount=Decimal("25"))
    dispute_event(client, fake, topup, "created", "needs_response")
    dispute_event(client, fake, topup, "funds_withdrawn", "needs_response")
    assert balances(cast) == (Decimal(0), {"Alpha": Decimal(0), "Beta": Decimal(0)})
    assert lab_debt(lab=cast.lab) == Decimal(25)
    assert topup.credits_taken_back == Decimal(100)
    return topup


def test_an_inquiry_withdraws_no_funds_and_takes_no_credits(client, cast, stripe_fake):
    topup = paid(client, stripe_fake, cast, amount="40")
    dispute_event(client, stripe_fake, topup, "created", "warning_needs_response")
    assert (topup.dispute_id, topup.dispute_status, topup.disputed_minor) == (
        "dp_test_1",
        "warning_needs_response",
        0,
    )
    assert lab_balance(cast.lab).balance == Decimal(40)
    assert not JournalEntry.objects.filter(type=EntryType.CHARGEBACK).exists()
    assert "dispute inquiry" in billing_page(client, cast)
    # It escalates into a chargeback: the funds leave, the credits go.
    dispute_event(client, stripe_fake, topup, "funds_withdrawn", "needs_response")
    assert (topup.disputed_minor, lab_balance(cast.lab).balance) == (4000, Decimal(0))
    assert "disputed" in billing_page(client, cast)


def test_a_dispute_won_forgives_its_debt_and_gives_the_credits_back(client, cast, stripe_fake):
    topup = spent_then_disputed(client, stripe_fake, cast)

    dispute_event(client, stripe_fake, topup, "funds_reinstated", "won")

    assert (topup.dispute_status, topup.disputed_minor, topup.credits_taken_back) == (
        "won",
        0,
        Decimal(0),
    )
    debt = LabDebt.objects.get()
    assert (debt.amount, debt.repaid, debt.forgiven, lab_debt(lab=cast.lab)) == (
        Decimal(25),
        Decimal(0),
        Decimal(25),
        Decimal(0),
    )
    # The 75 taken from Beta come back to the lab, where the top-up put them.
    assert balances(cast) == (Decimal(75), {"Alpha": Decimal(0), "Beta": Decimal(0)})
    reinstated = JournalEntry.objects.get(type=EntryType.REINSTATE)
    assert sorted(line.amount for line in reinstated.lines.all()) == [Decimal(-75), Decimal(75)]
    assert reinstated.metadata["debts_forgiven"] == [debt.pk]
    assert ledger_audit() == []
    page = billing_page(client, cast)
    assert "dispute won" in page and "The lab owes" not in page

    # The closing event after it (another event id), and replays: nothing more moves.
    dispute_event(client, stripe_fake, topup, "closed", "won")
    dispute_event(client, stripe_fake, topup, "funds_reinstated", "won")
    assert JournalEntry.objects.filter(type=EntryType.REINSTATE).count() == 1
    assert balances(cast)[0] == Decimal(75) and lab_debt(lab=cast.lab) == Decimal(0)


def test_a_dispute_lost_keeps_the_credits_taken_and_the_debt(client, cast, stripe_fake):
    topup = spent_then_disputed(client, stripe_fake, cast)
    dispute_event(client, stripe_fake, topup, "closed", "lost")
    assert (topup.dispute_status, topup.disputed_minor) == ("lost", 10000)
    assert balances(cast)[0] == Decimal(0) and lab_debt(lab=cast.lab) == Decimal(25)
    assert not JournalEntry.objects.filter(type=EntryType.REINSTATE).exists()
    assert "dispute lost" in billing_page(client, cast)


def test_an_older_copy_of_a_closed_dispute_changes_nothing(client, cast, stripe_fake):
    """In the offline mode events are not re-read: a late `created` must not reopen it."""
    topup = spent_then_disputed(client, stripe_fake, cast)
    dispute_event(client, stripe_fake, topup, "closed", "won")
    stale = Dispute("dp_test_1", None, None, None, 10000, "fraudulent", "needs_response")
    topups.topup_dispute_record(topup=topup, dispute=stale)
    topup.refresh_from_db()
    assert (topup.dispute_status, topup.disputed_minor) == ("won", 0)
    assert balances(cast)[0] == Decimal(75) and lab_debt(lab=cast.lab) == Decimal(0)


def test_a_won_dispute_after_the_debt_was_repaid_is_left_to_an_operator(
    client, cast, stripe_fake, caplog
):
    topup = paid(client, stripe_fake, cast, amount="50")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="50")
    usage_charge(project=cast.alpha, amount=Decimal("50"))  # all spent
    dispute_event(client, stripe_fake, topup, "created", "needs_response")
    assert lab_debt(lab=cast.lab) == Decimal(50)
    paid(client, stripe_fake, cast, amount="60")  # repays the 50 first
    assert (balances(cast)[0], lab_debt(lab=cast.lab)) == (Decimal(10), Decimal(0))

    with caplog.at_level(logging.ERROR, logger="billing.topups"):
        dispute_event(client, stripe_fake, topup, "closed", "won")

    assert "50.000000 credits" in caplog.text and "grant them by hand" in caplog.text
    assert topup.credits_taken_back == Decimal(0)  # the operator's to grant, once
    assert balances(cast)[0] == Decimal(10)
    assert not JournalEntry.objects.filter(type=EntryType.REINSTATE).exists()
    assert ledger_audit() == []
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="billing.topups"):
        dispute_event(client, stripe_fake, topup, "funds_reinstated", "won")
    assert "grant them by hand" not in caplog.text


def test_credits_of_a_grant_voided_since_are_not_given_back(client, cast, stripe_fake, caplog):
    topup = paid(client, stripe_fake, cast, amount="30")
    dispute_event(client, stripe_fake, topup, "created", "needs_response")
    assert lab_balance(cast.lab).balance == Decimal(0)
    services.grant_void(grant=Grant.objects.get(pk=topup.grant_id), reason="fraud review")

    with caplog.at_level(logging.ERROR, logger="billing.topups"):
        dispute_event(client, stripe_fake, topup, "closed", "won")

    assert lab_balance(cast.lab).balance == Decimal(0)
    assert "30.000000 credits" in caplog.text and "grant them by hand" in caplog.text


def test_a_partial_refund_stays_taken_back_when_a_dispute_on_the_rest_is_won(
    client, cast, stripe_fake
):
    topup = paid(client, stripe_fake, cast, amount="100")
    stripe_fake.put(sf.charge(topup, refunded_minor=3000, intent=topup.stripe_payment_intent_id))
    charge = sf.charge(topup, refunded_minor=3000, intent=topup.stripe_payment_intent_id)
    sf.deliver(client, sf.event("charge.refunded", charge))
    dispute_event(client, stripe_fake, topup, "created", "needs_response", amount_minor=7000)
    assert lab_balance(cast.lab).balance == Decimal(0)

    dispute_event(client, stripe_fake, topup, "closed", "won", amount_minor=7000)

    assert topup.credits_taken_back == Decimal(30)
    assert lab_balance(cast.lab).balance == Decimal(70)
    assert ledger_audit() == []


def test_an_older_inquiry_copy_does_not_undo_the_chargeback_it_became(client, cast, stripe_fake):
    """The `created` event of an inquiry, re-read before the escalation and applied after it."""
    topup = paid(client, stripe_fake, cast, amount="40")
    dispute_event(client, stripe_fake, topup, "funds_withdrawn", "needs_response")
    assert lab_balance(cast.lab).balance == Decimal(0)
    inquiry = Dispute("dp_test_1", None, None, None, 4000, "fraudulent", "warning_needs_response")
    topups.topup_dispute_record(topup=topup, dispute=inquiry)
    topup.refresh_from_db()
    assert (topup.dispute_status, topup.disputed_minor) == ("needs_response", 4000)
    assert lab_balance(cast.lab).balance == Decimal(0)


@pytest.mark.parametrize("gone", ["depleted", "expired"])
def test_credits_gone_unused_before_the_dispute_are_not_given_back(
    client, cast, stripe_fake, caplog, gone
):
    """A refund took 50; the other 50 went back unused before the dispute counted them; the
    dispute is won: only what the dispute itself took could come back, and it took nothing."""
    topup = paid(client, stripe_fake, cast, amount="100")
    charge = stripe_fake.put(
        sf.charge(topup, refunded_minor=5000, intent=topup.stripe_payment_intent_id)
    )
    sf.deliver(client, sf.event("charge.refunded", charge))
    assert lab_balance(cast.lab).balance == Decimal(50)
    grant = Grant.objects.get(pk=topup.grant_id)
    if gone == "depleted":
        services.lab_deplete(lab=cast.lab, reason="operator")
    else:
        grant.expires_at = grant.effective_at + timedelta(days=1)
        grant.save(update_fields=["expires_at"])
        with time_machine.travel(grant.expires_at + timedelta(minutes=1)):
            grants_expire()
    assert lab_balance(cast.lab).balance == Decimal(0)
    dispute_event(client, stripe_fake, topup, "created", "needs_response", amount_minor=5000)
    assert topup.credits_taken_back == Decimal(100) and lab_debt(lab=cast.lab) == Decimal(0)

    with caplog.at_level(logging.ERROR, logger="billing.topups"):
        dispute_event(client, stripe_fake, topup, "closed", "won", amount_minor=5000)

    assert lab_balance(cast.lab).balance == Decimal(0)
    assert topup.credits_taken_back == Decimal(50)  # the refund's
    assert not JournalEntry.objects.filter(type=EntryType.REINSTATE).exists()
    assert "grant them by hand" not in caplog.text
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
def test_a_dispute_won_while_another_top_up_repays_debts_does_not_deadlock(cast, stripe_fake):
    """Giving back locks the accounts before the debts, as a payment repaying debts does; the
    other order deadlocked when the two met (forced here: each waits for the other's first
    lock)."""
    client = Client()
    topup = spent_then_disputed(client, stripe_fake, cast)
    stripe_fake.put(
        sf.dispute(topup, amount_minor=10000, intent=topup.stripe_payment_intent_id, status="won")
    )
    won = sf.event("charge.dispute.closed", stripe_fake.objects["dp_test_1"])
    other = start(cast, amount="40")
    stripe_fake.put(sf.session(other, intent="pi_other"))
    paid_event = sf.event("checkout.session.completed", sf.session(other, intent="pi_other"))

    giving_started, paying_locked = threading.Event(), threading.Event()
    accounts_lock, debts_repay = topups.accounts_lock, topups._debts_repay
    giver = {}

    def accounts_lock_after_the_payment(*refs):
        if threading.get_ident() == giver.get("thread"):
            giving_started.set()
            paying_locked.wait(10)  # the payment holds the system account now
        return accounts_lock(*refs)

    def debts_repay_once_giving(topup):
        giving_started.wait(10)
        paying_locked.set()
        return debts_repay(topup)

    def give():
        giver["thread"] = threading.get_ident()
        return sf.deliver(Client(), won).status_code

    statuses = []

    def run(send):
        try:
            statuses.append(send())
        finally:
            connection.close()

    with (
        mock.patch.object(topups, "accounts_lock", accounts_lock_after_the_payment),
        mock.patch.object(topups, "_debts_repay", debts_repay_once_giving),
    ):
        threads = [
            threading.Thread(target=run, args=(give,)),
            threading.Thread(
                target=run, args=(lambda: sf.deliver(Client(), paid_event).status_code,)
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    assert statuses == [200, 200]
    assert JournalEntry.objects.filter(type=EntryType.REINSTATE).count() == 1
    assert lab_debt(lab=cast.lab) == Decimal(0)
    assert ledger_audit() == []


def refund_event(client, fake, topup, refunded_minor):
    charge = fake.put(
        sf.charge(topup, refunded_minor=refunded_minor, intent=topup.stripe_payment_intent_id)
    )
    assert sf.deliver(client, sf.event("charge.refunded", charge)).status_code == 200
    topup.refresh_from_db()


def lab_total(cast) -> Decimal:
    state = lab_balance(cast.lab)
    return state.balance + sum(project.balance for project in state.projects)


@pytest.mark.parametrize("first", ["refund", "dispute"])
def test_a_refund_and_a_dispute_converge_whichever_event_comes_first(
    client, cast, stripe_fake, first
):
    """Stripe refunded 50, then the payer disputed the other 50; of the credits, 50 were held
    by a job when an operator depleted the rest, and the job gave its 50 back. The dispute is
    won: the lab keeps what the refund left it, whichever event arrived first."""
    topup = paid(client, stripe_fake, cast, amount="100")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="100")
    job = uuid.uuid4()
    services.hold_create(project=cast.alpha, amount="50", job_uuid=job)
    services.lab_deplete(lab=cast.lab, reason="operator")
    usage_charge(project=cast.alpha, amount=Decimal(0), job_uuid=job, release_rest=True)
    assert lab_total(cast) == Decimal(50)
    if first == "refund":
        refund_event(client, stripe_fake, topup, 5000)
    # The dispute's charge already says 5000 refunded, as Stripe's copy does.
    dispute_event(
        client, stripe_fake, topup, "created", "needs_response", amount_minor=5000,
        refunded_minor=5000,
    )  # fmt: skip
    if first == "dispute":
        refund_event(client, stripe_fake, topup, 5000)
    assert lab_total(cast) == Decimal(0)

    dispute_event(
        client, stripe_fake, topup, "closed", "won", amount_minor=5000, refunded_minor=5000
    )

    assert lab_total(cast) == Decimal(0)  # the refund took the 50 the job gave back
    assert topup.credits_taken_back == Decimal(50) and lab_debt(lab=cast.lab) == Decimal(0)
    assert ledger_audit() == []


def test_a_project_top_up_won_back_goes_to_its_project(client, cast, stripe_fake):
    topup = paid(client, stripe_fake, cast, amount="100", project=cast.beta)
    services.budget_move(lab=cast.lab, debited=cast.beta, credited=cast.alpha, amount="30")
    services.budget_reverse(lab=cast.lab, project=cast.beta, amount="20")
    usage_charge(project=cast.alpha, amount=Decimal(10))
    dispute_event(client, stripe_fake, topup, "created", "needs_response")
    assert lab_total(cast) == Decimal(0) and lab_debt(lab=cast.lab) == Decimal(10)

    dispute_event(client, stripe_fake, topup, "closed", "won")

    assert balances(cast) == (Decimal(0), {"Alpha": Decimal(0), "Beta": Decimal(90)})
    assert lab_debt(lab=cast.lab) == Decimal(0) and ledger_audit() == []


def test_a_forgiven_debt_is_not_repaid_again(client, cast, stripe_fake, caplog):
    topup = paid(client, stripe_fake, cast, amount="100")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="100")
    usage_charge(project=cast.alpha, amount=Decimal(40))
    dispute_event(client, stripe_fake, topup, "created", "needs_response")
    paid(client, stripe_fake, cast, amount="15")  # repays 15 of the 40
    assert lab_debt(lab=cast.lab) == Decimal(25)
    assert "25.00" in billing_page(client, cast)

    with caplog.at_level(logging.ERROR, logger="billing.topups"):
        dispute_event(client, stripe_fake, topup, "closed", "won")

    debt = LabDebt.objects.get()
    assert (debt.amount, debt.repaid, debt.forgiven) == (Decimal(40), Decimal(15), Decimal(25))
    assert "15.000000 credits" in caplog.text  # the repaid part: the operator's
    assert lab_debt(lab=cast.lab) == Decimal(0) and lab_total(cast) == Decimal(60)
    paid(client, stripe_fake, cast, amount="20")
    assert lab_total(cast) == Decimal(80)
    assert JournalEntry.objects.filter(type=EntryType.DEBT).count() == 1
    assert ledger_audit() == []


def test_a_won_dispute_gives_back_no_more_than_its_own_share(client, cast, stripe_fake):
    """40 of 100 disputed with 80 spent, then the other 60 refunded (its event late): once the
    dispute is won the lab owes what it spent beyond what it kept paying for."""
    topup = paid(client, stripe_fake, cast, amount="100")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="100")
    usage_charge(project=cast.alpha, amount=Decimal(80))
    dispute_event(client, stripe_fake, topup, "created", "needs_response", amount_minor=4000)
    refund_event(client, stripe_fake, topup, 6000)

    dispute_event(client, stripe_fake, topup, "closed", "won", amount_minor=4000)

    assert lab_total(cast) == Decimal(0)
    assert lab_debt(lab=cast.lab) == Decimal(40)  # paid 40 net, spent 80
    assert topup.credits_taken_back == Decimal(60)
    assert ledger_audit() == []


def test_what_a_lab_owes_leaves_out_what_was_repaid_or_forgiven(client, cast, stripe_fake):
    topup = paid(client, stripe_fake, cast, amount="10")
    LabDebt.objects.create(
        lab=cast.lab, topup=topup, amount=100, repaid=10, forgiven=30, reason="dispute"
    )
    LabDebt.objects.create(lab=cast.lab, topup=topup, amount=5, forgiven=5, reason="dispute")
    assert lab_debt(lab=cast.lab) == Decimal(60)
    assert "60.00" in billing_page(client, cast)


@pytest.mark.parametrize("now", ["won", "warning_under_review"])
def test_the_refresh_command_applies_what_open_disputes_became(client, cast, stripe_fake, now):
    """A dispute recorded before statuses were kept (blank): won since, its closing event
    ignored then, or an inquiry all along that took the credits anyway. The command reads it
    from Stripe and gives the credits back; closed ones are not read again."""
    topup = spent_then_disputed(client, stripe_fake, cast)
    TopUp.objects.filter(pk=topup.pk).update(dispute_status="")
    stripe_fake.put(
        sf.dispute(topup, amount_minor=10000, intent=topup.stripe_payment_intent_id, status=now)
    )
    out = io.StringIO()

    call_command("stripe_disputes_refresh", stdout=out)

    assert "1 open dispute(s)" in out.getvalue()
    assert balances(cast)[0] == Decimal(75) and lab_debt(lab=cast.lab) == Decimal(0)
    reads = len([r for r in stripe_fake.requests if r.path == "/v1/disputes/dp_test_1"])
    call_command("stripe_disputes_refresh", stdout=io.StringIO())
    read_again = len([r for r in stripe_fake.requests if r.path == "/v1/disputes/dp_test_1"])
    assert read_again == (reads if now == "won" else reads + 1)  # an inquiry is still open
    assert JournalEntry.objects.filter(type=EntryType.REINSTATE).count() == 1
    assert ledger_audit() == []
