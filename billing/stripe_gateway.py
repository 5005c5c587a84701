"""The one module that talks to Stripe (and the only one that imports `stripe`).

It pins the API version, turns Stripe's errors into ours (billing/errors.py), and reads Stripe's
objects into small facts, so nothing else depends on Stripe's shapes. Callers never hold a
database transaction open while calling it. Every write carries an idempotency key that the
caller derives from its own row.

Without STRIPE_SECRET_KEY (the embedded default) it is offline. Only in the offline test mode
(STRIPE_OFFLINE_TEST_MODE too) do writes return local ids while the test-mode checkout page
(billing/test_mode.py) plays Stripe's part; otherwise payments are off and every write raises
PaymentProviderRefusedError. Local ids ("cus_local_…", "pm_local_card", …) are never sent to
Stripe.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
from django.conf import settings

from billing.errors import PaymentDeclinedError, PaymentProviderError, PaymentProviderRefusedError

logger = logging.getLogger(__name__)

# Pinned: Stripe objects are read in this version's shapes. The webhook endpoint in the Stripe
# dashboard must send events in the same version.
API_VERSION = "2026-10-28.endive"
_EXPAND_SESSION = ["payment_intent.latest_charge", "payment_intent.payment_method", "invoice"]
_EXPAND_PAYMENT = ["latest_charge", "payment_method"]

# (method, url, headers, body) -> (HTTP status, response body): tests replace the network.
Transport = Callable[[str, str, Mapping[str, str], str | None], tuple[int, str]]
_transport: Transport | None = None


class WebhookSignatureError(Exception):
    """A webhook whose signature is missing, malformed, wrong or too old."""


class WebhookEventError(Exception):
    """A correctly signed body that is not a Stripe event: no string id or type, or a
    data.object that is not an object."""


class StripeObjectError(WebhookEventError):
    """A Stripe object with a field of the wrong type or shape (an amount that is not a
    non-negative integer, an id that is not a short string): nothing is written from it."""


class _TransportClient(stripe.HTTPClient):
    name = "meterbill-transport"

    def __init__(self, transport: Transport) -> None:
        super().__init__()
        self._send = transport

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: Any = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        status, body = self._send(method.upper(), url, dict(headers or {}), post_data)
        return body, status, {"request-id": "req_local"}

    def close(self) -> None:
        pass


@contextmanager
def transport_replaced(transport: Transport) -> Iterator[None]:
    """Send every Stripe request to `transport` instead of the network (tests)."""
    global _transport
    previous, _transport = _transport, transport
    try:
        yield
    finally:
        _transport = previous


def offline() -> bool:
    """No Stripe key: the offline test mode."""
    return not settings.STRIPE_SECRET_KEY


def test_mode() -> bool:
    """Offline, and the local test-mode checkout is allowed (STRIPE_OFFLINE_TEST_MODE)."""
    return offline() and settings.STRIPE_OFFLINE_TEST_MODE


def is_local(object_id: str | None) -> bool:
    """An id the offline test mode made up ("cus_local_…", "pm_local_card"): Stripe has never
    heard of it. All of them, and none of Stripe's, contain "_local_"."""
    return "_local_" in (object_id or "")


def _payments_off() -> PaymentProviderRefusedError:
    return PaymentProviderRefusedError("Payments are not set up here (no Stripe keys)")


def _never_local(**ids: str | None) -> None:
    """Refuse to send an id of the offline test mode to Stripe."""
    for name, value in ids.items():
        if is_local(value):
            raise PaymentProviderRefusedError(
                f"The {name.replace('_', ' ')} {value} was made in the offline test mode; "
                "Stripe does not know it",
                details={name: value},
            )


def _client() -> stripe.StripeClient:
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        stripe_version=API_VERSION,
        max_network_retries=2,
        http_client=_TransportClient(_transport) if _transport is not None else None,
    )


@contextmanager
def _stripe_errors() -> Iterator[None]:
    try:
        yield
    except stripe.CardError as exc:
        raise PaymentDeclinedError(
            exc.user_message or "The payment was declined",
            details={"code": exc.code, "payment_intent": _error_payment_intent(exc)},
        ) from exc
    except (
        stripe.InvalidRequestError,
        stripe.AuthenticationError,
        stripe.PermissionError,
        stripe.IdempotencyError,
    ) as exc:
        # The same request would be refused again: no retry can help.
        logger.warning("Stripe refused a call: %s", exc)
        raise PaymentProviderRefusedError(
            f"Stripe refused the request ({exc.code or type(exc).__name__})",
            details={"stripe_error": exc.code, "payment_intent": _error_payment_intent(exc)},
        ) from exc
    except stripe.StripeError as exc:
        logger.warning("Stripe call failed: %s", exc)
        raise PaymentProviderError(details={"stripe_error": exc.code}) from exc


def _error_payment_intent(exc: stripe.StripeError) -> str | None:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    return _id(body.get("error", {}).get("payment_intent"))


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if isinstance(obj, stripe.StripeObject) else dict(obj or {})


def _id(value: Any) -> str | None:
    """An id, whether Stripe sent the id or the expanded object."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return _text(value, "id") or None


_TEXT_MAX = 255  # ids, currencies, statuses, reasons: all short in Stripe's API


def _text(value: Any, field: str) -> str:
    """A short string field ("" when absent); anything else is a StripeObjectError, as is text
    PostgreSQL cannot store (NUL, or a lone surrogate that JSON's \\ud800 can spell)."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > _TEXT_MAX or not _storable(value):
        raise StripeObjectError(f"Stripe's {field} is not a short string: {str(value)[:80]!r}")
    return value


_LINK_MAX = 2000  # TopUp.receipt_url and invoice_url
_MESSAGE_MAX = 1000


def _storable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _link(value: Any) -> str:
    """A page Stripe links to (a receipt, an invoice): "" unless an https URL we can store and
    show; a bad one must not hold up the payment it comes with."""
    if isinstance(value, str) and value.startswith("https://") and len(value) <= _LINK_MAX:
        return value if _storable(value) else ""
    return ""


def _message(value: Any) -> str:
    """Stripe's words for a person (a decline's reason), made storable: no NUL, valid UTF-8,
    at most _MESSAGE_MAX characters."""
    if not isinstance(value, str):
        return ""
    text = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return text[:_MESSAGE_MAX]


def object_id(obj: Mapping[str, Any]) -> str | None:
    """An event's object's id; None without one; StripeObjectError for one that is no id."""
    return _id(obj)


def _minor(value: Any, field: str, *, absent: int | None = 0) -> int | None:
    """An amount in minor units (`absent` when there is none); anything but a non-negative
    integer is a StripeObjectError."""
    if value is None:
        return absent
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StripeObjectError(f"Stripe's {field} is not an amount: {str(value)[:80]!r}")
    return value


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# Webhooks ------------------------------------------------------------------------------------


def webhook_secret() -> str:
    """STRIPE_WEBHOOK_SECRET; when empty, a local secret derived from SECRET_KEY, with which the
    offline test mode signs its events."""
    if settings.STRIPE_WEBHOOK_SECRET:
        return settings.STRIPE_WEBHOOK_SECRET
    digest = hmac.new(settings.SECRET_KEY.encode(), b"stripe-webhook", hashlib.sha256)
    return "whsec_local_" + digest.hexdigest()[:32]


def event_verify(payload: bytes, signature_header: str | None) -> dict[str, Any]:
    """The event, once its Stripe-Signature header proves it was signed with our secret in the
    last five minutes."""
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(
            text, signature_header, webhook_secret(), stripe.Webhook.DEFAULT_TOLERANCE
        )
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
        raise WebhookSignatureError(str(exc)) from exc
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise WebhookEventError(f"not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise WebhookEventError("not a Stripe event")
    for field in ("id", "type"):
        if not isinstance(event.get(field), str) or not event[field]:
            raise WebhookEventError(f"a Stripe event without a string {field}")
    _text(event["id"], "event id")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise WebhookEventError(f"Stripe event {event['id']} has no data.object")
    return event


# What we read from Stripe's objects -----------------------------------------------------------


@dataclass(frozen=True)
class Payment:
    """What a payment (a Checkout Session's or an off-session PaymentIntent's) tells us."""

    topup_uuid: str | None
    paid: bool
    amount_minor: int | None
    currency: str
    payment_intent_id: str | None
    payment_method_id: str = ""
    payment_method_label: str = ""
    charge_id: str = ""
    receipt_url: str = ""
    invoice_id: str = ""
    invoice_url: str = ""
    session_status: str = ""  # Checkout only: open, complete, expired
    failure_message: str = ""


@dataclass(frozen=True)
class Charge:
    id: str
    payment_intent_id: str | None
    topup_uuid: str | None
    amount_refunded_minor: int


@dataclass(frozen=True)
class Dispute:
    id: str
    charge_id: str | None
    payment_intent_id: str | None
    topup_uuid: str | None
    amount_minor: int
    reason: str
    status: str
    refunded_minor: int = 0  # of its charge, as read with it (outside test mode)

    @property
    def withdrawn_minor(self) -> int:
        """What Stripe holds back from us for it now: nothing for an inquiry, or once won."""
        return 0 if self.status in DISPUTE_FUNDS_KEPT else self.amount_minor


# Stripe's dispute statuses in which the funds are with us: inquiries (no funds are withdrawn
# for them), a dispute won (the funds are reinstated) or prevented (settled by a refund, which
# charge.refunded reports). Any other status, including one Stripe adds later, holds them back.
DISPUTE_FUNDS_KEPT = frozenset(
    {"warning_needs_response", "warning_under_review", "warning_closed", "won", "prevented"}
)
DISPUTE_CLOSED = frozenset({"warning_closed", "won", "lost", "prevented"})


def _card_label(payment_method: Mapping[str, Any], charge: Mapping[str, Any]) -> str:
    card = _object(payment_method.get("card")) or _object(
        _object(charge.get("payment_method_details")).get("card")
    )
    if card.get("last4"):
        return _message(f"{card.get('brand', 'card')} •••• {card['last4']}")
    return _message(str(payment_method.get("type", "")))


def _from_payment_intent(intent: Mapping[str, Any]) -> dict[str, Any]:
    charge = _object(intent.get("latest_charge"))
    method = _object(intent.get("payment_method"))
    return {
        "payment_intent_id": _id(intent) if isinstance(intent, Mapping) else None,
        "payment_method_id": _id(intent.get("payment_method")) or "",
        "payment_method_label": _card_label(method, charge),
        "charge_id": _id(intent.get("latest_charge")) or "",
        "receipt_url": _link(charge.get("receipt_url")),
    }


def session_payment(session: Mapping[str, Any], *, refresh: bool = True) -> Payment:
    """A Checkout Session's payment. Refreshed from Stripe (outside test mode), so the answer is
    its state now, whatever order its events arrived in."""
    if refresh and not offline():
        with _stripe_errors():
            session = _plain(
                _client().v1.checkout.sessions.retrieve(
                    session["id"], params={"expand": _EXPAND_SESSION}
                )
            )
    intent = _object(session.get("payment_intent"))
    invoice = _object(session.get("invoice"))
    metadata = _object(session.get("metadata"))
    facts = {
        "payment_intent_id": _id(session.get("payment_intent")),
        **({k: v for k, v in _from_payment_intent(intent).items() if v} if intent else {}),
    }
    return Payment(
        topup_uuid=metadata.get("topup") or session.get("client_reference_id"),
        paid=session.get("payment_status") == "paid",
        amount_minor=_minor(session.get("amount_total"), "amount_total", absent=None),
        currency=_text(session.get("currency"), "currency").lower(),
        invoice_id=_id(session.get("invoice")) or "",
        invoice_url=_link(invoice.get("hosted_invoice_url")),
        session_status=_text(session.get("status"), "status"),
        **facts,
    )


def payment_intent_payment(intent: Mapping[str, Any], *, refresh: bool = True) -> Payment:
    """A PaymentIntent's payment, refreshed from Stripe outside test mode."""
    if refresh and not offline():
        with _stripe_errors():
            intent = _plain(
                _client().v1.payment_intents.retrieve(
                    intent["id"], params={"expand": _EXPAND_PAYMENT}
                )
            )
    error = _object(intent.get("last_payment_error"))
    return Payment(
        topup_uuid=_object(intent.get("metadata")).get("topup"),
        paid=intent.get("status") == "succeeded",
        amount_minor=_minor(
            intent.get("amount_received") or intent.get("amount"), "amount", absent=None
        ),
        currency=_text(intent.get("currency"), "currency").lower(),
        failure_message=_message(error.get("message")),
        **_from_payment_intent(intent),
    )


def charge_read(charge: Mapping[str, Any]) -> Charge:
    """A charge, refreshed outside test mode (amount_refunded is cumulative, so the latest read
    wins); its PaymentIntent's metadata names the top-up even before we learnt the intent's id."""
    if not offline():
        with _stripe_errors():
            charge = _plain(
                _client().v1.charges.retrieve(charge["id"], params={"expand": ["payment_intent"]})
            )
    intent = _object(charge.get("payment_intent"))
    metadata = _object(intent.get("metadata")) or _object(charge.get("metadata"))
    return Charge(
        id=_text(charge["id"], "charge id"),
        payment_intent_id=_id(charge.get("payment_intent")),
        topup_uuid=metadata.get("topup"),
        amount_refunded_minor=_minor(charge.get("amount_refunded"), "amount_refunded") or 0,
    )


def dispute_read(dispute: Mapping[str, Any]) -> Dispute:
    """A dispute, refreshed outside test mode (its status moves on: the latest read wins), with
    the top-up its charge's PaymentIntent names."""
    if not offline():
        with _stripe_errors():
            dispute = _plain(_client().v1.disputes.retrieve(dispute["id"]))
    charge = (
        charge_read({"id": _id(dispute.get("charge"))})
        if not offline() and _id(dispute.get("charge"))
        else None
    )
    metadata = _object(dispute.get("metadata"))
    return Dispute(
        id=_text(dispute["id"], "dispute id"),
        charge_id=_id(dispute.get("charge")),
        payment_intent_id=_id(dispute.get("payment_intent"))
        or (charge.payment_intent_id if charge else None),
        topup_uuid=(charge.topup_uuid if charge else None) or metadata.get("topup"),
        amount_minor=_minor(dispute.get("amount"), "amount") or 0,
        reason=_text(dispute.get("reason"), "reason"),
        status=_text(dispute.get("status"), "status"),
        refunded_minor=charge.amount_refunded_minor if charge else 0,
    )


# Writes ---------------------------------------------------------------------------------------


def customer_create(*, lab_uuid: str, name: str, email: str, idempotency_key: str) -> str:
    if offline():
        if not test_mode():
            raise _payments_off()
        return f"cus_local_{lab_uuid.replace('-', '')}"
    with _stripe_errors():
        customer = _client().v1.customers.create(
            params={"name": name, "email": email, "metadata": {"lab": lab_uuid}},
            options={"idempotency_key": idempotency_key},
        )
    return customer.id


@dataclass(frozen=True)
class CheckoutOrder:
    topup_uuid: str
    lab_uuid: str
    customer_id: str
    currency: str
    amount_minor: int
    product_name: str
    save_payment_method: bool
    success_url: str
    cancel_url: str
    test_mode_url: str  # where the offline test mode sends the payer instead


def checkout_session_create(order: CheckoutOrder, *, idempotency_key: str) -> tuple[str, str]:
    """A Checkout Session in payment mode: (session id, URL to send the payer to). No payment
    method types are named, so the payer sees whatever the Stripe account enables."""
    if offline():
        if not test_mode():
            raise _payments_off()
        return f"cs_local_{order.topup_uuid.replace('-', '')}", order.test_mode_url
    _never_local(customer=order.customer_id)
    metadata = {"topup": order.topup_uuid, "lab": order.lab_uuid}
    payment_intent_data: dict[str, Any] = {"metadata": metadata}
    if order.save_payment_method:
        payment_intent_data["setup_future_usage"] = "off_session"
    params: dict[str, Any] = {
        "mode": "payment",
        "customer": order.customer_id,
        "client_reference_id": order.topup_uuid,
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": order.currency,
                    "unit_amount": order.amount_minor,
                    "product_data": {"name": order.product_name},
                },
            }
        ],
        "invoice_creation": {"enabled": True, "invoice_data": {"metadata": metadata}},
        "payment_intent_data": payment_intent_data,
        "metadata": metadata,
        "success_url": order.success_url,
        "cancel_url": order.cancel_url,
    }
    with _stripe_errors():
        session = _client().v1.checkout.sessions.create(
            params=params, options={"idempotency_key": idempotency_key}
        )
    return session.id, session.url


def off_session_payment_create(
    *,
    topup_uuid: str,
    lab_uuid: str,
    customer_id: str,
    payment_method_id: str,
    currency: str,
    amount_minor: int,
    description: str,
    idempotency_key: str,
) -> str:
    """Charge the saved payment method without the payer present; returns the PaymentIntent id.
    Raises PaymentDeclinedError when the bank refuses (its details name the intent), and
    PaymentProviderRefusedError when payments are off or the saved card is a test-mode one."""
    if offline():
        if not test_mode():
            raise _payments_off()
        return f"pi_local_{topup_uuid.replace('-', '')}"
    _never_local(customer=customer_id, payment_method=payment_method_id)
    params = {
        "amount": amount_minor,
        "currency": currency,
        "customer": customer_id,
        "payment_method": payment_method_id,
        "off_session": True,
        "confirm": True,
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        "description": description,
        "metadata": {"topup": topup_uuid, "lab": lab_uuid},
    }
    with _stripe_errors():
        intent = _client().v1.payment_intents.create(
            params=params, options={"idempotency_key": idempotency_key}
        )
    return intent.id


def refund_create(
    *, payment_intent_id: str, amount_minor: int, topup_uuid: str, idempotency_key: str
) -> str:
    """Ask Stripe to refund; the credits go back when its charge.refunded event arrives. The
    offline test mode refunds only its own (local) payments; a real one needs Stripe's keys."""
    if offline():
        if not test_mode() or not is_local(payment_intent_id):
            raise _payments_off()
        return f"re_local_{idempotency_key}"
    _never_local(payment_intent=payment_intent_id)
    with _stripe_errors():
        refund = _client().v1.refunds.create(
            params={
                "payment_intent": payment_intent_id,
                "amount": amount_minor,
                "reason": "requested_by_customer",
                "metadata": {"topup": topup_uuid},
            },
            options={"idempotency_key": idempotency_key},
        )
    return refund.id


# Reconciliation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaidObject:
    kind: str  # "session" or "charge"
    id: str
    topup_uuid: str | None
    payment_intent_id: str | None
    amount_minor: int
    currency: str
    created: datetime


def paid_objects_since(since: datetime) -> list[PaidObject]:
    """Paid Checkout Sessions and succeeded charges created since `since` (none offline)."""
    if offline():
        return []
    window = {"created": {"gte": int(since.timestamp())}, "limit": 100}
    found: list[PaidObject] = []
    with _stripe_errors():
        client = _client()
        sessions = client.v1.checkout.sessions.list(params={**window, "status": "complete"})
        for raw in sessions.auto_paging_iter():
            session = _plain(raw)
            if session.get("payment_status") == "paid":
                payment = session_payment(session, refresh=False)
                found.append(_paid("session", session, payment.topup_uuid, payment))
        charges = client.v1.charges.list(params={**window, "expand": ["data.payment_intent"]})
        for raw in charges.auto_paging_iter():
            charge = _plain(raw)
            if charge.get("paid") and charge.get("status") == "succeeded":
                metadata = _object(_object(charge.get("payment_intent")).get("metadata"))
                found.append(_paid("charge", charge, metadata.get("topup"), None))
    return found


def _paid(
    kind: str, obj: Mapping[str, Any], topup_uuid: str | None, payment: Payment | None
) -> PaidObject:
    return PaidObject(
        kind=kind,
        id=obj["id"],
        topup_uuid=topup_uuid,
        payment_intent_id=payment.payment_intent_id if payment else _id(obj.get("payment_intent")),
        amount_minor=int(obj.get("amount_total") or obj.get("amount") or 0),
        currency=(obj.get("currency") or "").lower(),
        created=datetime.fromtimestamp(int(obj.get("created") or 0), tz=UTC),
    )
