"""Stripe's webhook events: verified, deduplicated, applied to the top-up they name.

Each event is applied in one transaction that locks its top-up row, checks and records the
event id (unique), and makes its effect; replays and concurrent deliveries of one event find
the record and do nothing. Outside test mode the object is re-read from Stripe first (no
transaction is open then), so each handler sees the payment as it is now and events arriving in
any order converge: a paid payment wins over pending, failed and expired, refunded amounts are
cumulative, a dispute counts as it stands now (funds withdrawn, or with us again once won), and
credits are granted once per top-up.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from django.db import transaction

from billing import stripe_gateway, topups
from billing.models import StripeEvent, TopUp, TopUpKind
from billing.stripe_gateway import (
    Payment,
    StripeObjectError,
    WebhookEventError,
    WebhookSignatureError,
)

logger = logging.getLogger(__name__)

Effect = Callable[[TopUp], object]


def webhook_receive(payload: bytes, signature_header: str | None) -> int:
    """Handle one webhook delivery; returns the HTTP status to answer: 400 for a bad or missing
    signature, a body that is not an event or an object with an ill-typed field (nothing
    written; logged as an error), 200 otherwise (also for types
    we ignore and objects that are not ours or have no id), so Stripe retries only what failed
    on our side (an exception: a 500)."""
    try:
        event = stripe_gateway.event_verify(payload, signature_header)
    except (WebhookSignatureError, WebhookEventError) as exc:
        logger.warning("Stripe webhook refused: %s", exc)
        return 400
    handler = _HANDLERS.get(event["type"])
    if handler is None:
        logger.info("Stripe event %s of type %s ignored", event["id"], event["type"])
        return 200
    obj = event["data"]["object"]
    if not _usable_id(obj):
        logger.warning(
            "Stripe event %s (%s): its object has no usable id; ignored", event["id"], event["type"]
        )
        return 200
    try:
        if StripeEvent.objects.filter(event_id=event["id"]).exists():
            return 200  # a replay: skip even the refresh from Stripe
        handler(event, obj)
    except StripeObjectError as exc:  # nothing was written from it
        logger.error("Stripe event %s (%s) refused: %s", event["id"], event["type"], exc)
        return 400
    return 200


def _usable_id(obj: dict[str, Any]) -> bool:
    try:
        return bool(stripe_gateway.object_id(obj))
    except StripeObjectError:
        return False


def _apply(event: dict[str, Any], lookups: list[dict[str, object]], effect: Effect) -> None:
    """Lock the first top-up a lookup finds and apply `effect`, recording the event with it."""
    with transaction.atomic():
        topup = None
        for lookup in lookups:
            if all(lookup.values()):
                topup = (
                    TopUp.objects.select_for_update(of=("self",))
                    .select_related("lab", "project", "created_by", "grant")
                    .filter(**lookup)
                    .first()
                )
            if topup is not None:
                break
        if topup is None:
            logger.warning(
                "Stripe event %s (%s) names no top-up of ours (%s); ignored",
                event["id"],
                event["type"],
                lookups,
            )
            return
        if StripeEvent.objects.filter(event_id=event["id"]).exists():
            return
        effect(topup)
        StripeEvent.objects.create(event_id=event["id"], type=event["type"], topup=topup)


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _matches(topup: TopUp, payment: Payment) -> bool:
    if payment.amount_minor == topup.amount_minor and payment.currency == topup.currency:
        return True
    logger.error(
        "Stripe payment for top-up %s is %s %s, expected %s %s; not credited",
        topup.uuid,
        payment.amount_minor,
        payment.currency,
        topup.amount_minor,
        topup.currency,
    )
    return False


def _session_event(event: dict[str, Any], session: dict[str, Any]) -> None:
    payment = stripe_gateway.session_payment(session)

    def effect(topup: TopUp) -> None:
        if topup.stripe_session_id not in (None, session["id"]):
            logger.error("Stripe session %s is not top-up %s's", session["id"], topup.uuid)
        elif payment.paid:
            if _matches(topup, payment):
                topup.stripe_session_id = session["id"]  # found by its uuid if still unknown
                topups.topup_credit(topup=topup, payment=payment)
        elif event["type"] == "checkout.session.async_payment_failed":
            topups.topup_fail(topup=topup, message="The payment failed")
        elif payment.session_status == "expired":
            unpaid = "The checkout was left or expired unpaid: nothing was charged"
            topups.topup_fail(topup=topup, message=unpaid, expired=True)
        else:  # completed, but an asynchronous payment (a bank debit) is still on its way
            topups.links_record(topup=topup, payment=payment)

    _apply(
        event,
        [{"stripe_session_id": session.get("id")}, {"uuid": _uuid(payment.topup_uuid)}],
        effect,
    )


def _payment_intent_event(event: dict[str, Any], intent: dict[str, Any]) -> None:
    payment = stripe_gateway.payment_intent_payment(intent)

    def effect(topup: TopUp) -> None:
        if payment.paid:
            if _matches(topup, payment):
                topups.topup_credit(topup=topup, payment=payment)
        elif event["type"] == "payment_intent.payment_failed" and topup.kind == TopUpKind.AUTO:
            # A Checkout lets the payer try another card; only its session's events decide.
            topups.links_record(topup=topup, payment=payment)
            topups.topup_fail(topup=topup, message=payment.failure_message or "Declined")

    _apply(
        event,
        [{"stripe_payment_intent_id": intent.get("id")}, {"uuid": _uuid(payment.topup_uuid)}],
        effect,
    )


def _charge_refunded(event: dict[str, Any], charge: dict[str, Any]) -> None:
    read = stripe_gateway.charge_read(charge)

    def effect(topup: TopUp) -> None:
        topup.stripe_charge_id = topup.stripe_charge_id or read.id
        topups.topup_refunds_record(topup=topup, refunded_minor=read.amount_refunded_minor)

    _apply(
        event,
        [{"stripe_payment_intent_id": read.payment_intent_id}, {"uuid": _uuid(read.topup_uuid)}],
        effect,
    )


def _dispute_event(event: dict[str, Any], dispute: dict[str, Any]) -> None:
    read = stripe_gateway.dispute_read(dispute)

    def effect(topup: TopUp) -> None:
        topups.topup_dispute_record(topup=topup, dispute=read)

    _apply(
        event,
        [{"stripe_payment_intent_id": read.payment_intent_id}, {"uuid": _uuid(read.topup_uuid)}],
        effect,
    )


def disputes_refresh() -> int:
    """Re-read from Stripe every dispute not known to be closed and apply it as its events
    would: for disputes whose later events came before they were handled, or never came.
    Returns how many were read (none in the offline test mode)."""
    if stripe_gateway.offline():
        return 0
    open_disputes = TopUp.objects.exclude(dispute_id="").exclude(
        dispute_status__in=stripe_gateway.DISPUTE_CLOSED
    )
    count = 0
    for topup_id, dispute_id in open_disputes.values_list("pk", "dispute_id"):
        read = stripe_gateway.dispute_read({"id": dispute_id})  # no transaction open
        with transaction.atomic():
            topup = (
                TopUp.objects.select_for_update(of=("self",))
                .select_related("lab", "project", "created_by", "grant")
                .get(pk=topup_id)
            )
            topups.topup_dispute_record(topup=topup, dispute=read)
        count += 1
    return count


_HANDLERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "checkout.session.completed": _session_event,
    "checkout.session.async_payment_succeeded": _session_event,
    "checkout.session.async_payment_failed": _session_event,
    "checkout.session.expired": _session_event,
    "payment_intent.succeeded": _payment_intent_event,
    "payment_intent.payment_failed": _payment_intent_event,
    "charge.refunded": _charge_refunded,
    # Every step of a dispute: each reads it as it is now (withdrawn, won, an inquiry closed).
    "charge.dispute.created": _dispute_event,
    "charge.dispute.updated": _dispute_event,
    "charge.dispute.closed": _dispute_event,
    "charge.dispute.funds_withdrawn": _dispute_event,
    "charge.dispute.funds_reinstated": _dispute_event,
}
