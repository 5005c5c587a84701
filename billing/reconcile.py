"""Reconciliation: Stripe's paid objects against our grants, both ways."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Min

from billing import stripe_gateway
from billing.currency import amount_format
from billing.models import CREDITED_STATUSES, Grant, GrantSource, TopUp

# A payment that succeeds at T has its Stripe objects created before T: a Checkout Session is
# open for up to a day, and a bank debit (SEPA, ACH, Bacs…) succeeds up to 14 business days after
# it started. Stripe lists objects by when they were created, not when they were paid, so the
# listing reaches this far back before `since`.
_LOOKBACK = timedelta(days=21)
# Stripe's timestamps are Unix seconds: nothing at Stripe is older than this.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Mismatch:
    kind: str  # "unpaid-in-ledger" or "ungranted-at-stripe"
    message: str


def _window_start(since: datetime) -> datetime:
    """How far back Stripe's objects are listed: _LOOKBACK before `since`, and before the oldest
    top-up credited since then (its row is written before Stripe hears of it)."""
    oldest = TopUp.objects.filter(status__in=CREDITED_STATUSES, paid_at__gte=since).aggregate(
        oldest=Min("created_at")
    )["oldest"]
    start = min(since, oldest) if oldest else since
    return max(start, EARLIEST + _LOOKBACK) - _LOOKBACK  # never before 1970, never overflows


def stripe_reconcile(*, since: datetime) -> list[Mismatch]:
    """Paid Stripe sessions and charges that may have been paid since `since` without a grant,
    and paid grants since then without a paid Stripe object. Offline test mode has nothing at
    Stripe to compare.

    Stripe does not say when an object was paid, only when it was created, so every paid object
    of the look-back window is checked for a grant: a payment started before `since` and paid
    after it (a bank debit) is reported too, not only those created since."""
    if stripe_gateway.offline():
        return []
    paid = stripe_gateway.paid_objects_since(_window_start(since))
    found: list[Mismatch] = []
    topups = TopUp.objects.select_related("grant")
    for obj in paid:
        lookup = (
            {"stripe_session_id": obj.id}
            if obj.kind == "session"
            else {"stripe_payment_intent_id": obj.payment_intent_id}
        )
        topup = topups.filter(**lookup).first() if all(lookup.values()) else None
        if topup is None and obj.topup_uuid:
            topup = topups.filter(uuid=obj.topup_uuid).first()
        if topup is None or topup.grant_id is None:
            state = f"top-up {topup.uuid} is {topup.status}" if topup else "no top-up of ours"
            paid_amount = amount_format(obj.amount_minor, currency=obj.currency)
            found.append(
                Mismatch(
                    "unpaid-in-ledger",
                    f"Stripe {obj.kind} {obj.id} ({paid_amount}, {obj.created:%Y-%m-%d %H:%M})"
                    f" was paid but has no grant: {state}",
                )
            )
    sessions = {o.id for o in paid if o.kind == "session"}
    intents = {o.payment_intent_id for o in paid if o.payment_intent_id}
    for topup in TopUp.objects.filter(status__in=CREDITED_STATUSES, paid_at__gte=since):
        if topup.stripe_session_id in sessions or topup.stripe_payment_intent_id in intents:
            continue
        found.append(
            Mismatch(
                "ungranted-at-stripe",
                f"top-up {topup.uuid} granted {topup.credits} credits (grant {topup.grant_id}) "
                "but Stripe lists no paid session or charge for it",
            )
        )
    orphans = Grant.objects.filter(
        source=GrantSource.STRIPE, created_at__gte=since, topup__isnull=True
    )
    for grant in orphans:
        found.append(
            Mismatch("ungranted-at-stripe", f"grant {grant.uuid} says Stripe but has no top-up")
        )
    return found
