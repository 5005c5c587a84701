"""Offline test mode: without Stripe keys, we play Stripe's part locally.

The test-mode checkout page, auto-recharge and operator refunds build the event Stripe would
send, sign it the way Stripe signs (HMAC-SHA256 of "timestamp.payload" with the webhook secret,
here the local one) and pass it through the same webhook handler as Stripe's own events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from billing import stripe_events, stripe_gateway
from billing.models import TopUp


def signature_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A Stripe-Signature header: t=<unix time>,v1=<hex HMAC-SHA256(secret, "t.payload")>."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{stamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def _deliver(event_type: str, obj: dict[str, Any]) -> int:
    event = {
        "id": f"evt_local_{secrets.token_hex(12)}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "livemode": False,
        "api_version": stripe_gateway.API_VERSION,
        "data": {"object": obj},
    }
    payload = json.dumps(event).encode()
    header = signature_header(payload, stripe_gateway.webhook_secret())
    return stripe_events.webhook_receive(payload, header)


def _local(prefix: str, topup: TopUp) -> str:
    return f"{prefix}_local_{topup.uuid.hex}"


def _metadata(topup: TopUp) -> dict[str, str]:
    return {"topup": str(topup.uuid), "lab": str(topup.lab.uuid)}


def _payment_intent(topup: TopUp) -> dict[str, Any]:
    # Stripe's events carry ids; ours expand the intent (there is no Stripe to fetch it from).
    return {
        "id": topup.stripe_payment_intent_id or _local("pi", topup),
        "object": "payment_intent",
        "status": "succeeded",
        "amount": topup.amount_minor,
        "amount_received": topup.amount_minor,
        "currency": topup.currency,
        "metadata": _metadata(topup),
        "payment_method": {
            "id": "pm_local_card",
            "type": "card",
            "card": {"brand": "test card", "last4": "4242"},
        },
        "latest_charge": {"id": _local("ch", topup), "receipt_url": ""},
    }


def checkout_complete(*, topup: TopUp) -> int:
    """The payer pays on the test-mode page: checkout.session.completed, paid."""
    session = {
        "id": topup.stripe_session_id,
        "object": "checkout.session",
        "status": "complete",
        "payment_status": "paid",
        "amount_total": topup.amount_minor,
        "currency": topup.currency,
        "client_reference_id": str(topup.uuid),
        "metadata": _metadata(topup),
        "payment_intent": _payment_intent(topup),
        "invoice": None,
    }
    return _deliver("checkout.session.completed", session)


def checkout_cancel(*, topup: TopUp) -> int:
    """The payer gives up on the test-mode page: the session expires."""
    session = {
        "id": topup.stripe_session_id,
        "object": "checkout.session",
        "status": "expired",
        "payment_status": "unpaid",
        "amount_total": topup.amount_minor,
        "currency": topup.currency,
        "client_reference_id": str(topup.uuid),
        "metadata": _metadata(topup),
        "payment_intent": None,
    }
    return _deliver("checkout.session.expired", session)


def payment_succeeded(*, topup: TopUp) -> int:
    """An off-session payment (auto-recharge) goes through."""
    return _deliver("payment_intent.succeeded", _payment_intent(topup))


def charge_refunded(*, topup: TopUp, amount_refunded_minor: int) -> int:
    charge = {
        "id": topup.stripe_charge_id or _local("ch", topup),
        "object": "charge",
        "payment_intent": topup.stripe_payment_intent_id,
        "amount": topup.amount_minor,
        "amount_refunded": amount_refunded_minor,
        "refunded": amount_refunded_minor >= topup.amount_minor,
        "metadata": _metadata(topup),
    }
    return _deliver("charge.refunded", charge)
