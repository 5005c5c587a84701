"""Stripe at the HTTP boundary: the real `stripe` library talks to this transport instead of the
network. Writes answer with responses in the API's documented shapes (stripe_responses/*.json,
filled in from the request); reads answer with objects a test registered (`fake.put`).

Like Stripe, a write repeated with the same Idempotency-Key answers the first response again.
Webhooks are signed for real: HMAC-SHA256 of "t.payload" with the secret, as Stripe does.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

RESPONSES = Path(__file__).parent / "stripe_responses"
WEBHOOK_SECRET = "whsec_test_0123456789abcdef"


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    idempotency_key: str | None
    stripe_version: str | None


def response(template: str, **values: object) -> str:
    text = (RESPONSES / f"{template}.json").read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    json.loads(text)  # a template left half-filled is a bug in the test
    return text


@dataclass
class FakeStripe:
    objects: dict[str, dict] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    listed: dict[str, list[dict]] = field(default_factory=dict)  # path -> objects
    decline: bool = False
    broken: bool = False  # every call answers 500
    refuse: bool = False  # payments answer 400 invalid_request_error (retrying cannot help)
    _replies: dict[str, tuple[int, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def put(self, obj: dict) -> dict:
        """What Stripe returns when the object is fetched (its current state)."""
        self.objects[obj["id"]] = obj
        return obj

    def writes(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == "POST" and r.path == path]

    def __call__(self, method, url, headers, body):
        parts = urlsplit(url)
        params = dict(parse_qsl(body or parts.query or "", keep_blank_values=True))
        key = headers.get("Idempotency-Key")
        with self._lock:
            self.requests.append(
                Request(method, parts.path, params, key, headers.get("Stripe-Version"))
            )
            if key and key in self._replies:
                return self._replies[key]
            reply = self._answer(method, parts.path, params)
            if key:
                self._replies[key] = reply
            return reply

    def _answer(self, method: str, path: str, params: dict[str, str]) -> tuple[int, str]:
        if self.broken:
            return 500, response("api_error")
        n = next(self._ids)
        if method == "GET":
            if path in self.listed:
                data = self.listed[path]
                return 200, json.dumps(
                    {"object": "list", "data": data, "has_more": False, "url": path}
                )
            obj = self.objects.get(path.rsplit("/", 1)[-1])
            return (200, json.dumps(obj)) if obj else (404, response("not_found", id=path))
        metadata = {k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")}
        if path == "/v1/customers":
            return 200, response(
                "customer", email=params.get("email", ""), name=params["name"], lab=metadata["lab"]
            )
        if path == "/v1/checkout/sessions":
            return 200, response(
                "checkout_session",
                id=f"cs_test_{n:04d}",
                amount=params["line_items[0][price_data][unit_amount]"],
                currency=params["line_items[0][price_data][currency]"],
                customer=params["customer"],
                topup=metadata["topup"],
                lab=metadata["lab"],
                success_url=params["success_url"],
            )
        if path == "/v1/payment_intents":
            values = {
                "id": f"pi_test_{n:04d}",
                "amount": params["amount"],
                "currency": params["currency"],
                "topup": metadata["topup"],
                "lab": metadata["lab"],
            }
            if self.refuse:
                return 400, response("invalid_request", id=params["payment_method"])
            if self.decline:
                return 402, response("payment_intent_declined", **values)
            return 200, response(
                "payment_intent_succeeded",
                **values,
                customer=params["customer"],
                description=params["description"],
                payment_method=params["payment_method"],
                suffix=f"{n:04d}",
            )
        if path == "/v1/refunds":
            return 200, response(
                "refund",
                id=f"re_test_{n:04d}",
                amount=params["amount"],
                topup=metadata["topup"],
                payment_intent=params["payment_intent"],
            )
        return 404, response("not_found", id=path)


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    stamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256)
    return f"t={stamp},v1={mac.hexdigest()}"


_events = itertools.count(1)


def event(type: str, obj: dict, event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id or f"evt_test_{next(_events):06d}",
            "object": "event",
            "type": type,
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": obj},
        }
    ).encode()


def deliver(client, payload: bytes, signature: str | None = "sign"):
    """POST a webhook the way Stripe does; `signature="sign"` signs it with the test secret."""
    headers = {}
    if signature == "sign":
        headers["HTTP_STRIPE_SIGNATURE"] = sign(payload)
    elif signature is not None:
        headers["HTTP_STRIPE_SIGNATURE"] = signature
    return client.post(
        "/billing/stripe/webhook/", payload, content_type="application/json", **headers
    )


# Stripe objects as its webhooks and retrieve calls show them --------------------------------


def session(topup, *, paid=True, status="complete", intent="pi_test_paid", method="pm_card_visa"):
    return {
        "id": topup.stripe_session_id,
        "object": "checkout.session",
        "amount_total": topup.amount_minor,
        "currency": topup.currency,
        "client_reference_id": str(topup.uuid),
        "metadata": {"topup": str(topup.uuid), "lab": str(topup.lab.uuid)},
        "mode": "payment",
        "status": status,
        "payment_status": "paid" if paid else "unpaid",
        "payment_intent": {
            "id": intent,
            "object": "payment_intent",
            "payment_method": {
                "id": method,
                "object": "payment_method",
                "type": "card",
                "card": {"brand": "visa", "last4": "4242"},
            },
            "latest_charge": {
                "id": "ch_test_paid",
                "object": "charge",
                "receipt_url": "https://pay.stripe.com/receipts/test_receipt",
            },
            "metadata": {"topup": str(topup.uuid)},
        }
        if intent
        else None,
        "invoice": {
            "id": "in_test_1",
            "object": "invoice",
            "hosted_invoice_url": "https://invoice.stripe.com/i/test_invoice",
        }
        if paid
        else None,
    }


def charge(topup, *, refunded_minor, intent="pi_test_paid", charge_id="ch_test_paid"):
    return {
        "id": charge_id,
        "object": "charge",
        "amount": topup.amount_minor,
        "amount_refunded": refunded_minor,
        "refunded": refunded_minor >= topup.amount_minor,
        "payment_intent": {"id": intent, "metadata": {"topup": str(topup.uuid)}},
        "paid": True,
        "status": "succeeded",
    }


def dispute(
    topup,
    *,
    amount_minor,
    charge_id="ch_test_paid",
    intent="pi_test_paid",
    status="needs_response",
    dispute_id="dp_test_1",
):
    return {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount_minor,
        "charge": charge_id,
        "payment_intent": intent,
        "reason": "fraudulent",
        "status": status,
    }
