"""Review of the Stripe top-up feature (issue 7): each test names a behaviour that should hold
and fails because of a defect in the code, not in the test."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal

import pytest
from django.test import Client

from billing import auto_recharge, topups
from billing.currency import amount_parse
from billing.errors import PaymentProviderError, TopUpError
from billing.models import (
    EntryType,
    JournalEntry,
    LabDebt,
    StripeCustomer,
    TopUp,
    TopUpKind,
    TopUpStatus,
)
from billing.selectors import lab_balance
from core.money import AmountError
from tests.billing import stripe_fake as sf
from tests.billing.test_stripe_refunds import paid, refund_event
from tests.billing.test_stripe_webhook import start

# Money ------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("new_rate", ["0.5", "2"])
def test_a_partial_refund_takes_back_the_share_of_credits_the_payment_bought(
    client, cast, stripe_fake, settings, new_rate
):
    """A partial refund is priced at today's credit rate, not the rate the top-up bought."""
    settings.CREDITS_PER_CURRENCY_UNIT = Decimal(1)
    topup = paid(client, stripe_fake, cast, amount="100")  # 100 USD bought 100 credits
    settings.CREDITS_PER_CURRENCY_UNIT = Decimal(new_rate)  # the price changes later
    response = refund_event(client, stripe_fake, topup, refunded_minor=5000)  # half refunded
    assert response.status_code == 200
    topup.refresh_from_db()
    assert topup.credits_taken_back == Decimal(50)
    assert lab_balance(cast.lab).balance == Decimal(50)
    assert LabDebt.objects.count() == 0


@pytest.mark.django_db
def test_a_dispute_that_arrives_before_the_payment_is_taken_back_as_a_dispute(
    client, cast, stripe_fake
):
    """An early dispute replayed at payment time is booked as reason 'refund'."""
    topup = start(cast, amount="40")
    stripe_fake.put(sf.session(topup))
    stripe_fake.put(sf.charge(topup, refunded_minor=0))
    dispute = stripe_fake.put(sf.dispute(topup, amount_minor=4000))
    assert sf.deliver(client, sf.event("charge.dispute.created", dispute)).status_code == 200
    sf.deliver(client, sf.event("checkout.session.completed", sf.session(topup)))
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID and topup.disputed_minor == 4000
    assert lab_balance(cast.lab).balance == Decimal(0)
    chargeback = JournalEntry.objects.get(type=EntryType.CHARGEBACK)
    assert chargeback.metadata["reason"] == "dispute"


@pytest.mark.parametrize(
    ("currency", "text"),
    [
        ("kwd", "5.125"),  # three-decimal: Stripe requires the last minor digit to be 0
        ("bhd", "10.001"),
        ("isk", "500.50"),  # two-decimal in the API, but Stripe refuses fractional kronur
    ],
)
def test_it_refuses_amounts_stripe_cannot_charge_in_the_currency(currency, text):
    """KWD/BHD amounts need a 0 last minor digit, ISK whole kronur; we accept others."""
    with pytest.raises(AmountError):
        amount_parse(text, currency=currency)


# Payments off (no keys, test mode off) -----------------------------------------------------


def _payments_off(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""
    settings.STRIPE_OFFLINE_TEST_MODE = False


@pytest.mark.django_db(transaction=True)
def test_without_keys_and_test_mode_off_auto_recharge_grants_nothing(cast, settings):
    """recharge_pay checks offline() not test_mode(): free credits with payments off."""
    _payments_off(settings)
    # The card was saved while real Stripe keys were configured.
    StripeCustomer.objects.create(
        lab=cast.lab,
        customer_id="cus_real",
        payment_method_id="pm_card_visa",
        payment_method_label="visa •••• 4242",
    )
    auto_recharge.auto_recharge_set(
        lab=cast.lab,
        actor=cast.alice,
        enabled=True,
        threshold=Decimal(10),
        amount=Decimal(25),
        monthly_cap=Decimal(100),
    )  # the lab's balance (0) is under the threshold: a recharge starts at once
    assert lab_balance(cast.lab).balance == Decimal(0)
    assert not TopUp.objects.filter(kind=TopUpKind.AUTO, status=TopUpStatus.PAID).exists()


@pytest.mark.django_db(transaction=True)
def test_without_keys_and_test_mode_off_an_operator_refund_takes_nothing_back(
    client, cast, stripe_fake, settings
):
    """A refund with payments off takes credits back locally; no money is refunded."""
    topup = paid(client, stripe_fake, cast, amount="30")
    _payments_off(settings)
    # Refusing is fine; taking the credits back without a refund at Stripe is not.
    with contextlib.suppress(TopUpError, PaymentProviderError):
        topups.topup_refund_request(topup=topup)
    assert lab_balance(cast.lab).balance == Decimal(30)


@pytest.mark.django_db
def test_a_local_customer_is_never_sent_to_real_stripe(client, cast, stripe_fake, settings):
    """A cus_local_ customer saved while payments were off is reused with real Stripe."""
    client.force_login(cast.alice)
    url = f"/app/labs/{cast.lab.uuid}/billing/top-up/"
    _payments_off(settings)
    client.post(url, {"preset": "25"})  # "payments are not set up": the top-up fails
    settings.STRIPE_SECRET_KEY = "sk_test_fake"  # keys configured later
    settings.STRIPE_WEBHOOK_SECRET = sf.WEBHOOK_SECRET
    assert client.post(url, {"preset": "25"}).status_code == 302
    sessions = stripe_fake.writes("/v1/checkout/sessions")
    assert len(sessions) == 1
    assert not sessions[0].params["customer"].startswith("cus_local_")


# Webhook bodies ----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "event",
    [
        {"type": "checkout.session.completed", "data": {"object": {"id": "cs_x"}}},  # no id
        {"id": "evt_1", "type": ["checkout.session.completed"], "data": {"object": {}}},
        {"id": "evt_2", "type": "checkout.session.completed", "data": {"object": "cs_x"}},
        {"id": "evt_3", "type": "charge.refunded", "data": {"object": {}}},  # no charge id
    ],
)
def test_a_signed_but_malformed_event_is_not_a_500(cast, stripe_fake, event):
    """Missing event id, non-str type or a non-object data.object is a 500."""
    payload = json.dumps(event).encode()
    response = sf.deliver(Client(raise_request_exception=False), payload)
    assert response.status_code in (200, 400)


# Settings ----------------------------------------------------------------------------------


def test_production_never_turns_the_free_test_mode_checkout_on():
    """Production with DJANGO_DEBUG=true in its env serves the free test checkout."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(root),
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_DEBUG": "true",
        "SECRET_KEY": "production-secret-" + "p" * 40,
        "API_KEY_PEPPER": "a-production-pepper",
        "ALLOWED_HOSTS": "billing.example.com",
        "EMAIL_URL": "smtp://localhost:25",
        "DATABASE_URL": "postgres://u:p@localhost/db",
        "REDIS_URL": "redis://localhost:6379/0",
    }
    script = (
        "import django; from django.conf import settings; django.setup(); "
        "from billing import stripe_gateway; "
        "print(settings.DEBUG, stripe_gateway.test_mode())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True
    )
    # Refusing to start is fine too; starting with the free checkout on is not.
    if result.returncode == 0:
        assert result.stdout.split() == ["False", "False"]
