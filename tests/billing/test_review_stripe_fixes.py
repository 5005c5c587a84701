"""Follow-ups of the Stripe top-up review (issue 7): test-mode ids never reach Stripe, refusals
that no retry can change fail an auto-recharge at once, one lab's trouble does not stop the
sweep and malformed webhook bodies are answered precisely."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import auto_recharge, services, stripe_gateway, topups
from billing.errors import PaymentProviderError, PaymentProviderRefusedError, TopUpError
from billing.models import AutoRecharge, StripeCustomer, StripeEvent, TopUp, TopUpKind, TopUpStatus
from billing.selectors import lab_balance
from tests.billing import stripe_fake as sf
from tests.billing.test_stripe_auto_recharge import card_saved, recharge_on
from tests.billing.test_stripe_webhook import nothing_written, start


def _test_mode_on(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""
    settings.STRIPE_OFFLINE_TEST_MODE = True


def _keys_set(settings):
    settings.STRIPE_SECRET_KEY = "sk_test_fake"
    settings.STRIPE_WEBHOOK_SECRET = sf.WEBHOOK_SECRET


# Test-mode ids once Stripe's keys are set ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_test_mode_customer_and_card_are_never_sent_to_stripe(
    client, cast, stripe_fake, settings
):
    _test_mode_on(settings)
    client.force_login(cast.alice)
    billing = f"/app/labs/{cast.lab.uuid}/billing/"
    client.post(f"{billing}top-up/", {"preset": "25", "save_payment_method": "on"})
    paid = TopUp.objects.get()
    client.post(f"{billing}top-ups/{paid.uuid}/test-checkout/", {"outcome": "pay"})
    customer = StripeCustomer.objects.get()
    assert customer.customer_id.startswith("cus_local_")
    assert customer.payment_method_id == "pm_local_card"

    _keys_set(settings)
    # The test card is no card at Stripe: not shown, not usable for auto-recharge.
    assert "test card" not in client.get(billing).content.decode()
    with pytest.raises(TopUpError, match="Save a payment method first"):
        recharge_on(cast, project=None)
    # Refunding the test payment at Stripe is refused, and takes nothing back.
    with pytest.raises(PaymentProviderRefusedError):
        topups.topup_refund_request(topup=paid)
    assert lab_balance(cast.lab).balance == Decimal(25)
    # The next Checkout gets a real customer, which replaces the local one (and its test card).
    assert client.post(f"{billing}top-up/", {"preset": "10"}).status_code == 302
    assert len(stripe_fake.writes("/v1/customers")) == 1
    (session,) = stripe_fake.writes("/v1/checkout/sessions")
    customer.refresh_from_db()
    assert not stripe_gateway.is_local(customer.customer_id)
    assert session.params["customer"] == customer.customer_id
    assert (customer.payment_method_id, customer.payment_method_label) == ("", "")
    assert stripe_fake.writes("/v1/refunds") == []


@pytest.mark.django_db
def test_an_auto_recharge_with_a_test_card_fails_without_calling_stripe(
    cast, stripe_fake, settings
):
    services.lab_top_up(lab=cast.lab, amount="1")
    StripeCustomer.objects.create(
        lab=cast.lab,
        customer_id="cus_local_abc",
        payment_method_id="pm_local_card",
        payment_method_label="test card •••• 4242",
    )
    setting = AutoRecharge.objects.create(  # switched on while in test mode
        lab=cast.lab, enabled=True, threshold=10, currency="usd", amount_minor=2000,
        monthly_cap_minor=10000,
    )  # fmt: skip
    topup = auto_recharge.recharge_start(setting_id=setting.pk)
    assert auto_recharge.recharge_pay(topup_id=topup.pk) is None
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.FAILED
    assert topup.failure_message == "No saved payment method"
    assert stripe_fake.requests == []
    # And the gateway itself refuses such ids, should anything else hand it one.
    with pytest.raises(PaymentProviderRefusedError):
        stripe_gateway.off_session_payment_create(
            topup_uuid=str(topup.uuid),
            lab_uuid=str(cast.lab.uuid),
            customer_id="cus_real",
            payment_method_id="pm_local_card",
            currency="usd",
            amount_minor=2000,
            description="x",
            idempotency_key="k",
        )
    assert stripe_fake.requests == []


# Auto-recharge: refusals and the sweep ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_payment_stripe_refuses_for_good_is_a_failure_at_once(client, cast, stripe_fake):
    """A 400 from Stripe is not retried for a day: it fails the top-up and counts."""
    card_saved(client, stripe_fake, cast)
    stripe_fake.refuse = True
    recharge_on(cast, threshold="100", amount="10", project=None)  # the lab's balance: 30
    for _ in range(2):  # each debit under the threshold tries again
        services.budget_assign(lab=cast.lab, project=cast.beta, amount="1")
    failed = TopUp.objects.filter(kind=TopUpKind.AUTO, status=TopUpStatus.FAILED)
    assert failed.count() == 3
    assert "Stripe refused the request (resource_missing)" in failed.first().failure_message
    assert len(stripe_fake.writes("/v1/payment_intents")) == 3  # each sent once
    setting = AutoRecharge.objects.get(lab=cast.lab)
    assert not setting.enabled and setting.consecutive_failures == 3


@pytest.mark.django_db(transaction=True)
def test_the_sweep_goes_on_when_one_lab_cannot_start(client, cast, stripe_fake, settings):
    card_saved(client, stripe_fake, cast)  # the lab: 30 credits and a card
    services.lab_top_up(lab=cast.charlie_lab, amount="1")
    AutoRecharge.objects.create(  # first in the sweep; its amount is over today's maximum
        lab=cast.charlie_lab, enabled=True, threshold=10, currency="usd",
        amount_minor=2_000_000, monthly_cap_minor=5_000_000,
    )  # fmt: skip
    AutoRecharge.objects.create(
        lab=cast.lab, enabled=True, threshold=50, currency="usd", amount_minor=2500,
        monthly_cap_minor=10000,
    )  # fmt: skip
    assert auto_recharge.auto_recharge_sweep() == 1
    started = TopUp.objects.get(kind=TopUpKind.AUTO)
    assert started.lab == cast.lab and started.stripe_payment_intent_id
    assert len(stripe_fake.writes("/v1/payment_intents")) == 1


@pytest.mark.django_db
def test_the_sweep_goes_on_when_stripe_fails_one_resend(cast, stripe_fake, monkeypatch):
    labs = [cast.lab, cast.charlie_lab]
    for n, lab in enumerate(labs):
        StripeCustomer.objects.create(lab=lab, customer_id=f"cus_{n}", payment_method_id=f"pm_{n}")
    unsent = [
        topups.topup_create(lab=lab, amount=Decimal(10), actor=None, kind=TopUpKind.AUTO)
        for lab in labs
    ]
    TopUp.objects.update(created_at=timezone.now() - timedelta(minutes=10))
    send = stripe_gateway.off_session_payment_create

    def first_one_unreachable(**kwargs):
        if kwargs["topup_uuid"] == str(unsent[0].uuid):
            raise PaymentProviderError(details={"stripe_error": None})
        return send(**kwargs)

    monkeypatch.setattr(stripe_gateway, "off_session_payment_create", first_one_unreachable)
    assert auto_recharge.auto_recharge_sweep() == 1
    first, second = (TopUp.objects.get(pk=t.pk) for t in unsent)
    assert first.status == TopUpStatus.PENDING and first.stripe_payment_intent_id is None
    assert second.status == TopUpStatus.PENDING and second.stripe_payment_intent_id


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("currency", "amount", "chargeable"), [("kwd", "5.125", "5.12"), ("isk", "500.50", "500")]
)
def test_no_top_up_is_created_for_an_amount_stripe_cannot_charge(
    cast, settings, currency, amount, chargeable
):
    """The services check it too, not only the forms (auto-recharge amounts, other callers)."""
    settings.TOPUP_CURRENCY = currency
    with pytest.raises(TopUpError, match=currency.upper()):
        topups.topup_create(lab=cast.lab, amount=Decimal(amount), actor=cast.alice)
    assert TopUp.objects.count() == 0
    topup = topups.topup_create(lab=cast.lab, amount=Decimal(chargeable), actor=cast.alice)
    assert topup.amount_minor == {"kwd": 5120, "isk": 50000}[currency]


# Webhook bodies -------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("event", "status"),
    [
        ({"type": "checkout.session.completed", "data": {"object": {"id": "cs_x"}}}, 400),
        ({"id": "", "type": "charge.refunded", "data": {"object": {"id": "ch_x"}}}, 400),
        ({"id": "evt_1", "type": 7, "data": {"object": {"id": "cs_x"}}}, 400),
        ({"id": "evt_2", "type": "checkout.session.completed", "data": {}}, 400),
        ({"id": "evt_3", "type": "checkout.session.completed", "data": {"object": []}}, 400),
        (["not", "an", "event"], 400),
        ({"id": "evt_4", "type": "checkout.session.completed", "data": {"object": {}}}, 200),
        ({"id": "evt_5", "type": "charge.dispute.created", "data": {"object": {"id": 5}}}, 200),
        ({"id": "evt_7", "type": "charge.refunded", "data": {"object": {"id": "ch_\x00"}}}, 200),
        ({"id": "evt_8", "type": "charge.refunded", "data": {"object": {"id": "ch_" * 90}}}, 200),
        ({"id": "evt_\x00", "type": "charge.refunded", "data": {"object": {"id": "ch_x"}}}, 400),
        # A lone surrogate (JSON "\ud800") is no text PostgreSQL can store.
        ({"id": "evt_\ud800", "type": "charge.refunded", "data": {"object": {"id": "ch_x"}}}, 400),
        ({"id": "evt_9", "type": "charge.refunded", "data": {"object": {"id": "ch_\ud800"}}}, 200),
        (
            {
                "id": "evt_10",
                "type": "checkout.session.completed",
                "data": {"object": {"id": "cs_\ud800"}},
            },
            200,
        ),
        ({"id": "evt_6", "type": "ping", "data": {"object": {}}}, 200),  # unknown type
    ],
)
def test_a_malformed_event_is_a_400_an_unusable_object_a_200_and_nothing_is_written(
    client, cast, stripe_fake, event, status
):
    response = sf.deliver(client, json.dumps(event).encode())
    assert response.status_code == status
    assert nothing_written()
    assert stripe_fake.requests == []


@pytest.mark.django_db
def test_a_signed_body_that_is_not_json_is_a_400(client, stripe_fake):
    assert sf.deliver(client, b"{not json").status_code == 400
    assert StripeEvent.objects.count() == 0


# Refund and dispute shares ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_refund_share_never_takes_back_more_than_the_top_up_bought(
    client, cast, stripe_fake, settings
):
    settings.CREDITS_PER_CURRENCY_UNIT = Decimal("0.333333")
    topup = start(cast, amount="10.01")
    stripe_fake.put(sf.session(topup))
    sf.deliver(client, sf.event("checkout.session.completed", sf.session(topup)))
    topup.refresh_from_db()
    bought = topup.credits
    settings.CREDITS_PER_CURRENCY_UNIT = Decimal(1000)
    for refunded in (1, 500, 1000, 1001):
        charge = stripe_fake.put(sf.charge(topup, refunded_minor=refunded))
        sf.deliver(client, sf.event("charge.refunded", charge))
        topup.refresh_from_db()
        assert topup.credits_taken_back <= bought
    assert topup.credits_taken_back == bought
    assert lab_balance(cast.lab).balance == Decimal(0)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("receipt_url", "https://pay.stripe.com/\ud800"),
        ("receipt_url", "javascript:alert(1)"),  # shown as a link: https only
        ("invoice_url", "https://invoice.stripe.com/\x00"),
        ("invoice_url", 12),
        ("card_brand", "vi\ud800sa"),
    ],
)
def test_an_unstorable_link_or_label_does_not_hold_up_the_payment(
    client, cast, stripe_fake, field, value
):
    topup = start(cast)
    session = sf.session(topup)
    if field == "receipt_url":
        session["payment_intent"]["latest_charge"]["receipt_url"] = value
    elif field == "invoice_url":
        session["invoice"]["hosted_invoice_url"] = value
    else:
        session["payment_intent"]["payment_method"]["card"]["brand"] = value
    stripe_fake.put(session)
    response = sf.deliver(client, sf.event("checkout.session.completed", session))
    assert response.status_code == 200
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID  # credited; the bad field is left out
    assert topup.receipt_url in ("", "https://pay.stripe.com/receipts/test_receipt")
    assert topup.invoice_url in ("", "https://invoice.stripe.com/i/test_invoice")
    assert all("\ud800" not in c.payment_method_label for c in StripeCustomer.objects.all())


@pytest.mark.django_db
def test_a_decline_message_stripe_cannot_spell_is_stored_readably(client, cast, stripe_fake):
    assert stripe_gateway._message("Card\x00 declined \ud800" + "x" * 2000) == (
        "Card declined ?" + "x" * 985
    )
