"""Offline test mode: no Stripe keys, and the whole flow still works through the signed webhook."""

from decimal import Decimal

import pytest
from django.core import mail

from billing import stripe_gateway, test_mode, topups
from billing.models import StripeCustomer, StripeEvent, TopUp, TopUpStatus
from billing.selectors import lab_balance
from tests.billing import stripe_fake as sf


def start_checkout(client, cast, **data):
    client.force_login(cast.alice)
    response = client.post(f"/app/labs/{cast.lab.uuid}/billing/top-up/", data)
    assert response.status_code == 302
    return TopUp.objects.latest("id"), response["Location"]


@pytest.mark.django_db(transaction=True)
def test_paying_on_the_test_page_credits_through_the_signed_webhook(client, cast, offline):
    topup, location = start_checkout(client, cast, preset="50", save_payment_method="on")
    assert location == f"/app/labs/{cast.lab.uuid}/billing/top-ups/{topup.uuid}/test-checkout/"
    page = client.get(location).content.decode()
    assert "TEST MODE" in page and "50.00 USD" in page

    response = client.post(location, {"outcome": "pay"})
    assert response.status_code == 302
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID and topup.stripe_session_id.startswith("cs_local_")
    assert lab_balance(cast.lab).balance == Decimal(50)
    assert StripeEvent.objects.get().type == "checkout.session.completed"
    customer = StripeCustomer.objects.get(lab=cast.lab)
    assert customer.customer_id.startswith("cus_local_")
    assert customer.payment_method_label == "test card •••• 4242"
    # The receipt mail went out after commit, once.
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["alice@example.com"]
    assert "TEST MODE" in mail.outbox[0].body
    assert f"/top-ups/{topup.uuid}/receipt/" in mail.outbox[0].body
    # Paying twice (back button) grants nothing more.
    client.post(location, {"outcome": "pay"})
    assert lab_balance(cast.lab).balance == Decimal(50)
    receipt = client.get(f"/app/labs/{cast.lab.uuid}/billing/top-ups/{topup.uuid}/receipt/")
    assert receipt.status_code == 200 and b"50.00" in receipt.content


@pytest.mark.django_db
def test_cancelling_on_the_test_page_expires_the_top_up(client, cast, offline):
    topup, location = start_checkout(client, cast, preset="10")
    client.post(location, {"outcome": "cancel"})
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.EXPIRED and topup.grant is None
    receipt = f"/app/labs/{cast.lab.uuid}/billing/top-ups/{topup.uuid}/receipt/"
    assert client.get(receipt).status_code == 404


@pytest.mark.django_db
def test_the_test_page_does_not_exist_with_stripe_keys(client, cast, stripe_fake):
    topup = topups.topup_create(lab=cast.lab, amount=Decimal(10), actor=cast.alice)
    TopUp.objects.filter(pk=topup.pk).update(stripe_session_id="cs_test_real")
    client.force_login(cast.alice)
    page = f"/app/labs/{cast.lab.uuid}/billing/top-ups/{topup.uuid}/test-checkout/"
    assert client.post(page, {"outcome": "pay"}).status_code == 404
    assert TopUp.objects.get().status == TopUpStatus.PENDING


@pytest.mark.django_db
def test_test_mode_signs_like_stripe_with_a_secret_derived_from_secret_key(
    client, cast, offline, settings
):
    secret = stripe_gateway.webhook_secret()
    assert secret.startswith("whsec_local_") and settings.SECRET_KEY not in secret
    settings.SECRET_KEY = "another-secret-key-" + "x" * 40
    assert stripe_gateway.webhook_secret() != secret
    # The page's events pass the same check as Stripe's: our own HMAC verifies them...
    payload = b'{"id": "evt_1", "type": "ping", "data": {"object": {}}}'
    header = test_mode.signature_header(payload, "whsec_x", timestamp=1700000000)
    assert header == sf.sign(payload, secret="whsec_x", timestamp=1700000000)
    # ...and an event signed with the derived secret is accepted by the webhook endpoint.
    assert (
        sf.deliver(client, payload, test_mode.signature_header(payload, secret)).status_code == 400
    )
    good = sf.deliver(
        client, payload, test_mode.signature_header(payload, stripe_gateway.webhook_secret())
    )
    assert good.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_an_operator_refund_works_offline_too(client, cast, offline):
    topup, location = start_checkout(client, cast, preset="25")
    client.post(location, {"outcome": "pay"})
    topup.refresh_from_db()
    asked = topups.topup_refund_request(topup=topup, amount_minor=1000)
    assert asked == 1000
    topup.refresh_from_db()
    assert topup.refunded_minor == 1000 and topup.status == TopUpStatus.PAID
    assert lab_balance(cast.lab).balance == Decimal(15)
    events = list(StripeEvent.objects.values_list("type", flat=True).order_by("id"))
    assert events == ["checkout.session.completed", "charge.refunded"]


@pytest.mark.django_db
def test_without_keys_and_test_mode_off_nobody_gets_free_credits(client, cast, offline, settings):
    settings.STRIPE_OFFLINE_TEST_MODE = False  # a production server without Stripe keys
    client.force_login(cast.alice)
    assert (
        "Payments are not set up"
        in client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
    )
    response = client.post(f"/app/labs/{cast.lab.uuid}/billing/top-up/", {"preset": "25"})
    assert response.status_code == 302
    topup = TopUp.objects.get()
    assert topup.status == TopUpStatus.FAILED
    page = f"/app/labs/{cast.lab.uuid}/billing/top-ups/{topup.uuid}/test-checkout/"
    assert client.post(page, {"outcome": "pay"}).status_code == 404
    assert lab_balance(cast.lab).balance == 0
