"""The webhook: real signatures, one grant per payment whatever the delivery order or count."""

import logging
import threading
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection
from django.test import Client

from billing import topups
from billing.models import EntryType, Grant, JournalEntry, StripeEvent, TopUp, TopUpStatus
from billing.selectors import lab_balance
from tests.billing import stripe_fake as sf


def start(cast, amount="25", project=None, user=None, save=False) -> TopUp:
    topup = topups.topup_create(
        lab=cast.lab,
        amount=Decimal(amount),
        project=project,
        actor=user or cast.alice,
        save_payment_method=save,
    )
    topups.checkout_start(
        topup=topup,
        success_url="http://testserver/ok",
        cancel_url="http://testserver/no",
        test_mode_url="/unused",
    )
    topup.refresh_from_db()
    return topup


def nothing_written():
    return (
        StripeEvent.objects.count(),
        Grant.objects.count(),
        JournalEntry.objects.count(),
    ) == (0, 0, 0)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        "t=1,v1=deadbeef",
        "garbage",
        "sign-with-wrong-secret",
        "sign-too-old",
    ],
)
def test_a_bad_or_missing_signature_is_a_400_and_writes_nothing(
    client, cast, stripe_fake, signature
):
    topup = start(cast)
    payload = sf.event("checkout.session.completed", stripe_fake.put(sf.session(topup)))
    if signature == "sign-with-wrong-secret":
        signature = sf.sign(payload, secret="whsec_someone_else")
    elif signature == "sign-too-old":
        signature = sf.sign(payload, timestamp=1_000_000_000)
    response = sf.deliver(client, payload, signature=signature)
    assert response.status_code == 400
    assert nothing_written()
    assert TopUp.objects.get().status == TopUpStatus.PENDING


@pytest.mark.django_db
def test_a_tampered_body_fails_its_signature(client, cast, stripe_fake):
    topup = start(cast)
    payload = sf.event("checkout.session.completed", stripe_fake.put(sf.session(topup)))
    signature = sf.sign(payload)
    tampered = payload.replace(b'"amount_total": 2500', b'"amount_total": 999999')
    assert tampered != payload
    assert sf.deliver(client, tampered, signature=signature).status_code == 400
    assert nothing_written()


@pytest.mark.django_db
def test_only_post_reaches_the_webhook(client):
    assert client.get("/billing/stripe/webhook/").status_code == 405


@pytest.mark.django_db
def test_a_paid_checkout_grants_its_credits_once_and_records_the_links(client, cast, stripe_fake):
    topup = start(cast, amount="25.50")
    payload = sf.event("checkout.session.completed", stripe_fake.put(sf.session(topup)))
    assert sf.deliver(client, payload).status_code == 200
    assert sf.deliver(client, payload).status_code == 200  # Stripe retries: a no-op
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID
    assert topup.grant.amount == Decimal("25.5") and topup.grant.category == "paid"
    assert topup.grant.source == "stripe" and topup.grant.created_by == cast.alice
    assert topup.stripe_payment_intent_id == "pi_test_paid"
    assert topup.receipt_url == "https://pay.stripe.com/receipts/test_receipt"
    assert topup.invoice_url == "https://invoice.stripe.com/i/test_invoice"
    assert lab_balance(cast.lab).balance == Decimal("25.5")
    assert StripeEvent.objects.get().topup == topup
    # The session was re-read from Stripe before it was believed, once per delivery at most.
    fetched = [
        r
        for r in stripe_fake.requests
        if r.path == f"/v1/checkout/sessions/{topup.stripe_session_id}"
    ]
    assert len(fetched) == 1
    assert fetched[0].params["expand[0]"] == "payment_intent.latest_charge"


@pytest.mark.django_db
def test_credits_per_currency_unit_is_a_setting(client, cast, stripe_fake, settings):
    settings.CREDITS_PER_CURRENCY_UNIT = Decimal("12.5")
    topup = start(cast, amount="10.01")
    assert topup.amount_minor == 1001 and topup.credits == Decimal("125.125")
    sf.deliver(client, sf.event("checkout.session.completed", stripe_fake.put(sf.session(topup))))
    assert lab_balance(cast.lab).balance == Decimal("125.125")


@pytest.mark.django_db
def test_a_top_up_for_a_project_lands_in_its_budget(client, cast, stripe_fake):
    topup = start(cast, amount="40", project=cast.beta)
    sf.deliver(client, sf.event("checkout.session.completed", stripe_fake.put(sf.session(topup))))
    state = lab_balance(cast.lab)
    assert state.balance == 0
    assert {p.project.name: p.balance for p in state.projects} == {
        "Alpha": Decimal(0),
        "Beta": Decimal(40),
    }


@pytest.mark.django_db
def test_unknown_event_types_get_200_and_write_nothing(client, stripe_fake):
    payload = sf.event("customer.created", {"id": "cus_x", "object": "customer"})
    assert sf.deliver(client, payload).status_code == 200
    assert nothing_written()
    assert stripe_fake.requests == []


@pytest.mark.django_db
def test_an_event_for_an_unknown_session_is_logged_answered_and_ignored(
    client, cast, stripe_fake, caplog
):
    foreign = {
        "id": "cs_test_not_ours",
        "object": "checkout.session",
        "amount_total": 2500,
        "currency": "usd",
        "metadata": {},
        "status": "complete",
        "payment_status": "paid",
        "payment_intent": "pi_not_ours",
    }
    stripe_fake.put(foreign)
    with caplog.at_level(logging.WARNING, logger="billing.stripe_events"):
        response = sf.deliver(client, sf.event("checkout.session.completed", foreign))
    assert response.status_code == 200
    assert nothing_written()
    assert "cs_test_not_ours" in caplog.text


@pytest.mark.django_db
def test_an_amount_that_does_not_match_is_not_credited(client, cast, stripe_fake, caplog):
    topup = start(cast, amount="25")
    paid = sf.session(topup)
    paid["amount_total"] = 100  # Stripe says 1.00 was paid for a 25.00 top-up
    with caplog.at_level(logging.ERROR, logger="billing.stripe_events"):
        sf.deliver(client, sf.event("checkout.session.completed", stripe_fake.put(paid)))
    assert Grant.objects.count() == 0
    assert TopUp.objects.get().status == TopUpStatus.PENDING
    assert "not credited" in caplog.text


@pytest.mark.django_db
def test_a_bank_debit_is_credited_when_it_succeeds_later(client, cast, stripe_fake):
    topup = start(cast)
    stripe_fake.put(sf.session(topup, paid=False))
    sf.deliver(client, sf.event("checkout.session.completed", sf.session(topup, paid=False)))
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PENDING and topup.stripe_payment_intent_id == "pi_test_paid"
    assert Grant.objects.count() == 0
    stripe_fake.put(sf.session(topup))  # the debit cleared
    sf.deliver(client, sf.event("checkout.session.async_payment_succeeded", sf.session(topup)))
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID
    assert lab_balance(cast.lab).balance == Decimal(25)


@pytest.mark.django_db
def test_a_failed_bank_debit_and_an_expired_session_grant_nothing(client, cast, stripe_fake):
    failed, expired = start(cast), start(cast, amount="30")
    unpaid = stripe_fake.put(sf.session(failed, paid=False))
    sf.deliver(client, sf.event("checkout.session.async_payment_failed", unpaid))
    gone = stripe_fake.put(sf.session(expired, paid=False, status="expired", intent=None))
    sf.deliver(client, sf.event("checkout.session.expired", gone))
    failed.refresh_from_db()
    expired.refresh_from_db()
    assert (failed.status, expired.status) == (TopUpStatus.FAILED, TopUpStatus.EXPIRED)
    assert Grant.objects.count() == 0


@pytest.mark.django_db
def test_out_of_order_expired_after_paid_keeps_the_payment(client, cast, stripe_fake):
    topup = start(cast)
    stripe_fake.put(sf.session(topup))
    sf.deliver(client, sf.event("checkout.session.completed", sf.session(topup)))
    # A stale "expired" event arrives late; Stripe, asked now, says the session is paid.
    sf.deliver(client, sf.event("checkout.session.expired", sf.session(topup, paid=False)))
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID
    assert lab_balance(cast.lab).balance == Decimal(25)


@pytest.mark.django_db
def test_the_payment_intent_and_the_session_event_credit_once_in_either_order(
    client, cast, stripe_fake
):
    first, second = start(cast, amount="10"), start(cast, amount="20")
    for topup, order in [(first, "session-first"), (second, "intent-first")]:
        stripe_fake.put(sf.session(topup, intent=f"pi_{topup.amount_minor}"))
        intent = stripe_fake.put(
            {
                "id": f"pi_{topup.amount_minor}",
                "object": "payment_intent",
                "status": "succeeded",
                "amount": topup.amount_minor,
                "amount_received": topup.amount_minor,
                "currency": "usd",
                "metadata": {"topup": str(topup.uuid)},
                "latest_charge": None,
                "payment_method": "pm_card_visa",
            }
        )
        events = [
            sf.event("checkout.session.completed", sf.session(topup)),
            sf.event("payment_intent.succeeded", intent),
        ]
        for payload in events if order == "session-first" else events[::-1]:
            assert sf.deliver(client, payload).status_code == 200
    assert sorted(Grant.objects.values_list("amount", flat=True)) == [Decimal(10), Decimal(20)]
    assert lab_balance(cast.lab).balance == Decimal(30)
    assert StripeEvent.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_the_same_paid_event_delivered_ten_times_at_once_grants_once(cast, stripe_fake):
    topup = start(cast, amount="50")
    payload = sf.event("checkout.session.completed", stripe_fake.put(sf.session(topup)))
    barrier = threading.Barrier(10)
    statuses, errors = [], []

    def deliver():
        try:
            barrier.wait()
            statuses.append(sf.deliver(Client(), payload).status_code)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and statuses == [200] * 10
    assert Grant.objects.count() == 1
    assert JournalEntry.objects.filter(type=EntryType.TOP_UP).count() == 1
    assert StripeEvent.objects.count() == 1
    assert lab_balance(cast.lab).balance == Decimal(50)
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID
    assert topup.receipt_sent_at is not None  # the receipt task ran once, after commit
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["alice@example.com"]
    body = mail.outbox[0].body
    assert mail.outbox[0].subject == "[Meterbill] Receipt: 50.00 USD for 50.00 credits"
    assert "Paid: 50.00 USD" in body and "Credits: 50.00" in body
    assert "https://pay.stripe.com/receipts/test_receipt" in body
    assert "https://invoice.stripe.com/i/test_invoice" in body


@pytest.mark.django_db(transaction=True)
def test_ten_different_events_for_one_payment_at_once_grant_once(cast, stripe_fake):
    """Concurrent completed, async-succeeded and intent events (distinct ids) converge."""
    topup = start(cast, amount="50")
    stripe_fake.put(sf.session(topup))
    intent = stripe_fake.put(
        {
            "id": "pi_test_paid",
            "object": "payment_intent",
            "status": "succeeded",
            "amount": 5000,
            "amount_received": 5000,
            "currency": "usd",
            "metadata": {"topup": str(topup.uuid)},
        }
    )
    kinds = [
        ("checkout.session.completed", sf.session(topup)),
        ("checkout.session.async_payment_succeeded", sf.session(topup)),
        ("payment_intent.succeeded", intent),
    ]
    payloads = [sf.event(*kinds[i % 3]) for i in range(10)]  # ten distinct event ids
    barrier = threading.Barrier(len(payloads))
    errors = []

    def deliver(payload):
        try:
            barrier.wait()
            assert sf.deliver(Client(), payload).status_code == 200
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert Grant.objects.count() == 1
    assert lab_balance(cast.lab).balance == Decimal(50)
    assert StripeEvent.objects.count() == 10
