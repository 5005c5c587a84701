"""Starting a top-up with Stripe keys: what Stripe is asked, with which idempotency keys."""

from decimal import Decimal

import pytest

from billing import stripe_gateway
from billing.models import StripeCustomer, TopUp, TopUpKind, TopUpStatus


def topup_post(client, cast, **data):
    return client.post(f"/app/labs/{cast.lab.uuid}/billing/top-up/", data)


@pytest.mark.django_db
def test_a_top_up_opens_a_checkout_session_for_the_labs_one_customer(client, cast, stripe_fake):
    client.force_login(cast.alice)  # only owners and admins may save the card for auto-recharge
    response = topup_post(client, cast, preset="25", save_payment_method="on")
    topup = TopUp.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"https://checkout.stripe.com/c/pay/{topup.stripe_session_id}"
    assert (topup.status, topup.kind, topup.amount_minor, topup.credits) == (
        TopUpStatus.PENDING,
        TopUpKind.CHECKOUT,
        2500,
        Decimal(25),
    )
    assert topup.created_by == cast.alice

    customer_call, session_call = stripe_fake.requests
    assert customer_call.path == "/v1/customers"
    assert customer_call.idempotency_key == f"meterbill-lab-{cast.lab.uuid}-customer"
    assert session_call.path == "/v1/checkout/sessions"
    assert session_call.idempotency_key == f"meterbill-topup-{topup.uuid}-checkout"
    assert {r.stripe_version for r in stripe_fake.requests} == {stripe_gateway.API_VERSION}
    params = session_call.params
    assert params["mode"] == "payment"
    assert params["customer"] == StripeCustomer.objects.get(lab=cast.lab).customer_id
    assert params["invoice_creation[enabled]"] == "true"
    assert params["payment_intent_data[setup_future_usage]"] == "off_session"
    assert params["payment_intent_data[metadata][topup]"] == str(topup.uuid)
    assert params["line_items[0][price_data][unit_amount]"] == "2500"
    assert params["line_items[0][price_data][currency]"] == "usd"
    assert params["success_url"].endswith(f"/billing/?paid={topup.uuid}")
    # Whatever the Stripe account enables: no payment method types are named.
    assert not any(key.startswith("payment_method_types") for key in params)

    # The second top-up reuses the customer and saves no card unless asked.
    client.force_login(cast.bob)  # a plain member may add credits to the lab
    topup_post(client, cast, amount="10.50")
    assert len(stripe_fake.writes("/v1/customers")) == 1
    second = stripe_fake.writes("/v1/checkout/sessions")[-1].params
    assert second["line_items[0][price_data][unit_amount]"] == "1050"
    assert "payment_intent_data[setup_future_usage]" not in second
    assert StripeCustomer.objects.count() == 1


@pytest.mark.django_db
def test_a_stripe_outage_fails_the_top_up_and_tells_the_payer(client, cast, stripe_fake):
    stripe_fake.broken = True
    client.force_login(cast.alice)
    response = topup_post(client, cast, preset="10")
    assert response.status_code == 302
    assert response["Location"] == f"/app/labs/{cast.lab.uuid}/billing/"
    page = client.get(response["Location"]).content.decode()
    assert "Stripe could not start the payment" in page
    assert TopUp.objects.get().status == TopUpStatus.FAILED
    # Retried by the library, each attempt with the same idempotency key.
    keys = {r.idempotency_key for r in stripe_fake.requests}
    assert len(stripe_fake.requests) == 3 and len(keys) == 1


@pytest.mark.django_db
def test_the_zero_decimal_currency_counts_whole_units(client, cast, stripe_fake, settings):
    settings.TOPUP_CURRENCY = "jpy"
    settings.TOPUP_MIN_AMOUNT, settings.TOPUP_MAX_AMOUNT = Decimal(500), Decimal(100000)
    settings.CREDITS_PER_CURRENCY_UNIT = Decimal("0.0067")
    client.force_login(cast.alice)
    assert topup_post(client, cast, amount="1500.5").status_code == 400
    assert topup_post(client, cast, amount="1500").status_code == 302
    topup = TopUp.objects.get()
    assert (topup.amount_minor, topup.credits) == (1500, Decimal("10.05"))
    assert (
        stripe_fake.writes("/v1/checkout/sessions")[0].params[
            "line_items[0][price_data][unit_amount]"
        ]
        == "1500"
    )
