"""Refunds and disputes: what is left of the grant goes back first, the rest is a debt that the
next top-up repays first; events in any order converge."""

from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.services import user_create
from billing import services, topups
from billing.charges import usage_charge
from billing.models import EntryType, JournalEntry, LabDebt, StripeEvent, TopUp, TopUpStatus
from billing.selectors import lab_balance, lab_debt
from tests.billing import stripe_fake as sf
from tests.billing.test_stripe_webhook import start


def paid(client, fake, cast, amount="100", **kwargs) -> TopUp:
    topup = start(cast, amount=amount, **kwargs)
    intent = f"pi_{topup.uuid.hex[:8]}"
    fake.put(sf.session(topup, intent=intent))
    assert (
        sf.deliver(client, sf.event("checkout.session.completed", sf.session(topup))).status_code
        == 200
    )
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID
    return topup


def refund_event(client, fake, topup, refunded_minor):
    charge = fake.put(
        sf.charge(
            topup,
            refunded_minor=refunded_minor,
            intent=topup.stripe_payment_intent_id or "pi_test_paid",
            charge_id=f"ch_{topup.uuid.hex[:8]}",
        )
    )
    return sf.deliver(client, sf.event("charge.refunded", charge))


def balances(cast):
    state = lab_balance(cast.lab)
    return state.balance, {p.project.name: p.balance for p in state.projects}


@pytest.mark.django_db
def test_a_refund_after_part_was_spent_takes_back_the_rest_and_records_a_debt(
    client, cast, stripe_fake
):
    topup = paid(client, stripe_fake, cast, amount="100")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="70")
    usage_charge(project=cast.alpha, amount=Decimal("60"))  # 60 of the 100 were used
    assert balances(cast) == (Decimal(30), {"Alpha": Decimal(10), "Beta": Decimal(0)})

    assert refund_event(client, stripe_fake, topup, refunded_minor=10000).status_code == 200

    assert balances(cast) == (Decimal(0), {"Alpha": Decimal(0), "Beta": Decimal(0)})
    entry = JournalEntry.objects.get(type=EntryType.CHARGEBACK)
    assert entry.lines.filter(amount__lt=0).count() == 2  # from the lab and from Alpha
    debt = LabDebt.objects.get()
    assert (debt.amount, debt.repaid, debt.topup) == (Decimal(60), Decimal(0), topup)
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.REFUNDED
    assert topup.credits_taken_back == Decimal(100)
    assert lab_debt(lab=cast.lab) == Decimal(60)

    # The same refund again (a replay, or the event re-sent with a new id) changes nothing.
    refund_event(client, stripe_fake, topup, refunded_minor=10000)
    assert LabDebt.objects.count() == 1 and lab_debt(lab=cast.lab) == Decimal(60)

    # The next top-up repays the debt first; the rest is spendable.
    paid(client, stripe_fake, cast, amount="100")
    assert balances(cast)[0] == Decimal(40)
    assert lab_debt(lab=cast.lab) == Decimal(0)
    assert JournalEntry.objects.filter(type=EntryType.DEBT).count() == 1


@pytest.mark.django_db
def test_a_debt_larger_than_the_next_top_up_is_repaid_over_several(client, cast, stripe_fake):
    topup = paid(client, stripe_fake, cast, amount="50")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="50")
    usage_charge(project=cast.alpha, amount=Decimal("50"))
    refund_event(client, stripe_fake, topup, refunded_minor=5000)
    assert lab_debt(lab=cast.lab) == Decimal(50)
    paid(client, stripe_fake, cast, amount="20")
    assert (balances(cast)[0], lab_debt(lab=cast.lab)) == (Decimal(0), Decimal(30))
    paid(client, stripe_fake, cast, amount="45", project=cast.beta)  # a project top-up repays too
    assert lab_debt(lab=cast.lab) == Decimal(0)
    assert balances(cast)[1]["Beta"] == Decimal(15)


@pytest.mark.django_db
def test_partial_refunds_arriving_out_of_order_converge(client, cast, stripe_fake):
    topup = paid(client, stripe_fake, cast, amount="100")
    stripe_fake.put(sf.charge(topup, refunded_minor=5000, intent=topup.stripe_payment_intent_id))
    # Stripe refunded 20 then 30 more (cumulative 20, then 50); the events come in reverse, and
    # each re-reads the charge, which says 50 by now.
    late = sf.event("charge.refunded", sf.charge(topup, refunded_minor=2000))
    early = sf.event("charge.refunded", sf.charge(topup, refunded_minor=5000))
    sf.deliver(client, early)
    sf.deliver(client, late)
    topup.refresh_from_db()
    assert topup.refunded_minor == 5000 and topup.status == TopUpStatus.PAID
    assert balances(cast)[0] == Decimal(50)
    assert LabDebt.objects.count() == 0


@pytest.mark.django_db
def test_a_refund_that_arrives_before_the_payment_is_applied_when_the_payment_is(
    client, cast, stripe_fake
):
    topup = start(cast, amount="80")
    stripe_fake.put(sf.session(topup))
    # charge.refunded first: its intent is not known to us yet, but Stripe's copy names the top-up.
    charge = stripe_fake.put(sf.charge(topup, refunded_minor=3000))
    sf.deliver(client, sf.event("charge.refunded", charge))
    topup.refresh_from_db()
    assert (topup.status, topup.refunded_minor) == (TopUpStatus.PENDING, 3000)
    sf.deliver(client, sf.event("checkout.session.completed", sf.session(topup)))
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID
    assert balances(cast)[0] == Decimal(50)  # 80 granted, 30 taken back


@pytest.mark.django_db
def test_a_dispute_takes_the_disputed_credits_back_and_is_recorded(client, cast, stripe_fake):
    topup = paid(client, stripe_fake, cast, amount="100")
    services.budget_assign(lab=cast.lab, project=cast.beta, amount="100")
    usage_charge(project=cast.beta, amount=Decimal("25"))
    stripe_fake.put(sf.charge(topup, refunded_minor=0, intent=topup.stripe_payment_intent_id))
    dispute = stripe_fake.put(
        sf.dispute(topup, amount_minor=10000, intent=topup.stripe_payment_intent_id)
    )
    payload = sf.event("charge.dispute.created", dispute)
    assert sf.deliver(client, payload).status_code == 200
    assert sf.deliver(client, payload).status_code == 200  # replay
    topup.refresh_from_db()
    assert (topup.dispute_id, topup.dispute_reason, topup.disputed_minor) == (
        "dp_test_1",
        "fraudulent",
        10000,
    )
    assert balances(cast)[1]["Beta"] == Decimal(0)
    assert lab_debt(lab=cast.lab) == Decimal(25)
    assert StripeEvent.objects.filter(type="charge.dispute.created").count() == 1
    # A refund of the disputed charge takes nothing more: at most the payment comes back.
    refund_event(client, stripe_fake, topup, refunded_minor=10000)
    assert lab_debt(lab=cast.lab) == Decimal(25)


@pytest.mark.django_db
def test_credits_held_by_a_running_job_stay_held_and_count_as_debt(client, cast, stripe_fake):
    import uuid

    topup = paid(client, stripe_fake, cast, amount="10")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="10")
    job = uuid.uuid4()
    services.hold_create(project=cast.alpha, amount="4", job_uuid=job)
    refund_event(client, stripe_fake, topup, refunded_minor=1000)
    assert balances(cast)[1]["Alpha"] == Decimal(0)
    assert lab_debt(lab=cast.lab) == Decimal(4)
    assert lab_balance(cast.lab).projects[0].reserved == Decimal(4)


@pytest.fixture
def operator(db):
    return user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)


@pytest.mark.django_db
def test_the_admin_refund_asks_stripe_and_the_webhook_takes_the_credits_back(
    client, cast, stripe_fake, operator
):
    topup = paid(client, stripe_fake, cast, amount="30")
    client.force_login(operator)
    action = {"action": "refund", "_selected_action": [topup.pk]}
    confirm = client.post("/admin/billing/topup/", action)
    assert confirm.status_code == 200 and b"Refund top-ups" in confirm.content
    for _ in range(2):  # a double click is one refund at Stripe
        response = client.post(
            "/admin/billing/topup/", {**action, "apply": "1", "reason": "customer asked"}
        )
        assert response.status_code == 302
    refunds = stripe_fake.writes("/v1/refunds")
    assert len(refunds) == 2 and len({r.idempotency_key for r in refunds}) == 1
    assert str(topup.uuid) in refunds[0].idempotency_key
    assert refunds[0].params["amount"] == "3000"
    assert refunds[0].params["payment_intent"] == topup.stripe_payment_intent_id
    assert balances(cast)[0] == Decimal(30)  # nothing moves until Stripe confirms
    refund_event(client, stripe_fake, topup, refunded_minor=3000)
    assert balances(cast)[0] == Decimal(0)
    from django.contrib.admin.models import LogEntry

    logged = LogEntry.objects.filter(object_id=str(topup.pk), user=operator)
    assert [entry.change_message for entry in logged] == [
        "Refund of 30.00 USD asked at Stripe: customer asked"
    ] * 2


@pytest.mark.django_db
def test_the_admin_lists_top_ups_by_status_lab_and_date(client, cast, stripe_fake, operator):
    paid(client, stripe_fake, cast, amount="30")
    topups.topup_create(lab=cast.charlie_lab, amount=Decimal("12"), actor=cast.charlie)
    client.force_login(operator)
    listed = client.get("/admin/billing/topup/?status__exact=paid").content.decode()
    assert "30.00 USD" in listed and "12.00 USD" not in listed
    by_lab = client.get(f"/admin/billing/topup/?lab__id__exact={cast.charlie_lab.pk}").content
    assert b"12.00 USD" in by_lab and b"30.00 USD" not in by_lab
    this_year = client.get(f"/admin/billing/topup/?created_at__year={timezone.now().year}")
    assert b"12.00 USD" in this_year.content
    assert b"12.00 USD" not in client.get("/admin/billing/topup/?created_at__year=2000").content
