"""Edge inputs a fuzzing review found answered with a 500: a lab without projects, a signed
Stripe object with ill-typed fields, an unknown test-checkout outcome."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from django.test import Client

from accounts.models import Scope
from accounts.services import lab_create
from billing import stripe_gateway, test_mode, topups
from billing.models import JournalEntry, StripeEvent, TopUp, TopUpStatus
from tests.billing import stripe_fake as sf

pytestmark = pytest.mark.django_db


def paid_topup(lab, actor) -> TopUp:
    topup = topups.topup_create(lab=lab, amount=Decimal("25"), actor=actor)
    topups.checkout_start(
        topup=topup, success_url="http://t/ok", cancel_url="http://t/no", test_mode_url="/x"
    )
    topup.refresh_from_db()
    test_mode.checkout_complete(topup=topup)
    topup.refresh_from_db()
    return topup


def delivered(obj: dict, event_type: str):
    payload = json.dumps(
        {"id": f"evt_{uuid.uuid4().hex}", "type": event_type, "data": {"object": obj}}
    ).encode()
    signature = sf.sign(payload, secret=stripe_gateway.webhook_secret())
    return Client(raise_request_exception=False).post(
        "/billing/stripe/webhook/",
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature,
    )


def test_depleting_a_lab_without_projects_moves_its_balance_back(token_client):
    client = token_client([Scope.ACCOUNTING])
    lab = str(uuid.uuid4())
    body = {"id": lab, "name": "No projects", "balance": "10"}
    assert (
        client.post("/api/accounting/account/virtual-lab", body, format="json").status_code == 201
    )
    response = client.post(
        "/api/accounting/budget/deplete/virtual-lab", {"vlab_id": lab}, format="json"
    )
    assert response.status_code == 200, response.content
    balance = client.get(f"/api/accounting/balance/virtual-lab/{lab}").json()["data"]
    assert balance["balance"] == "0.00"


def test_a_refund_of_a_lab_without_projects_is_recorded(cast, offline):
    lab = lab_create(name="No projects", lab_uuid=uuid.uuid4())
    topup = paid_topup(lab, cast.alice)
    charge = {
        "id": f"ch_local_{topup.uuid.hex}",
        "object": "charge",
        "payment_intent": topup.stripe_payment_intent_id,
        "amount": topup.amount_minor,
        "amount_refunded": topup.amount_minor,
        "metadata": {"topup": str(topup.uuid)},
    }
    assert delivered(charge, "charge.refunded").status_code == 200
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.REFUNDED and topup.refunded_minor == topup.amount_minor


@pytest.mark.parametrize(
    ("event_type", "field", "value"),
    [
        ("checkout.session.completed", "currency", 5),
        ("checkout.session.completed", "amount_total", "2500"),
        ("charge.refunded", "amount_refunded", "abc"),
        ("charge.refunded", "payment_intent", "pi_" + "x" * 300),
        ("charge.dispute.created", "amount", "abc"),
        ("charge.dispute.created", "amount", -1),
        ("charge.dispute.created", "amount", True),
        ("charge.dispute.created", "reason", 7),
        ("charge.dispute.created", "status", ["lost"]),
    ],
)
def test_a_signed_object_with_an_ill_typed_field_is_a_400_and_changes_nothing(
    cast, offline, event_type, field, value, caplog
):
    topup = paid_topup(cast.lab, cast.alice)
    meta = {"topup": str(topup.uuid)}
    obj = {
        "checkout.session.completed": {
            "id": topup.stripe_session_id,
            "payment_status": "paid",
            "status": "complete",
            "amount_total": topup.amount_minor,
            "currency": "usd",
            "metadata": meta,
        },
        "charge.refunded": {
            "id": "ch_1",
            "payment_intent": topup.stripe_payment_intent_id,
            "amount_refunded": 100,
            "metadata": meta,
        },
        "charge.dispute.created": {
            "id": "dp_1",
            "payment_intent": topup.stripe_payment_intent_id,
            "amount": 100,
            "reason": "fraudulent",
            "status": "needs_response",
            "metadata": meta,
        },
    }[event_type]
    entries, events = JournalEntry.objects.count(), StripeEvent.objects.count()
    response = delivered({**obj, field: value}, event_type)
    assert response.status_code == 400
    assert "refused: Stripe's" in caplog.text  # logged as an error for an operator
    assert (JournalEntry.objects.count(), StripeEvent.objects.count()) == (entries, events)
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID and topup.refunded_minor == 0


def test_the_test_checkout_only_pays_or_cancels(client, cast, offline):
    topup = topups.topup_create(lab=cast.lab, amount=Decimal("25"), actor=cast.alice)
    topups.checkout_start(
        topup=topup, success_url="http://t/ok", cancel_url="http://t/no", test_mode_url="/x"
    )
    client.force_login(cast.alice)
    url = f"/app/labs/{cast.lab.uuid}/billing/top-ups/{topup.uuid}/test-checkout/"
    for outcome in ("", "PAY", "refund"):
        assert client.post(url, {"outcome": outcome}).status_code == 400
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PENDING
    client.post(url, {"outcome": "pay"})
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID
