"""Top-ups: what a payment does to the ledger, and starting a Checkout.

A top-up row is written (pending) and committed before Stripe hears of it; its uuid derives the
idempotency key of every Stripe call for it. Credits enter only when Stripe says the payment
succeeded (billing/stripe_events.py calls `topup_credit` under the top-up's row lock), as one
paid grant through billing.services; refunds and disputes take them back (`topup_take_back`).
"""

from __future__ import annotations

import logging
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet, Sum
from django.utils import timezone

from accounts.models import Lab, Membership, Project, Role, User
from billing import services, stripe_gateway
from billing.currency import (
    amount_format,
    amount_parse,
    credits_for_minor,
    credits_share,
    from_minor,
    to_minor,
)
from billing.errors import TopUpError
from billing.ledger import SYSTEM, Leg, accounts_lock, entry_post, lab_ref, project_ref
from billing.models import (
    CREDITED_STATUSES,
    DEBT_OPEN,
    AutoRecharge,
    EntryType,
    Grant,
    GrantBalance,
    GrantSource,
    JournalLine,
    LabDebt,
    LedgerAccount,
    StripeCustomer,
    TopUp,
    TopUpKind,
    TopUpStatus,
)
from billing.stripe_gateway import DISPUTE_CLOSED, CheckoutOrder, Dispute, Payment
from core.money import AmountError

logger = logging.getLogger(__name__)


def idempotency_key(topup: TopUp, operation: str) -> str:
    """The key of one Stripe write for a top-up: the same row and operation, the same key."""
    return f"meterbill-topup-{topup.uuid}-{operation}"


def amount_check(amount: Decimal) -> None:
    """An amount of TOPUP_CURRENCY that Stripe charges, within the top-up range."""
    try:
        amount_parse(amount, currency=settings.TOPUP_CURRENCY)
    except AmountError as exc:
        raise TopUpError(str(exc)) from exc
    low, high = settings.TOPUP_MIN_AMOUNT, settings.TOPUP_MAX_AMOUNT
    currency = settings.TOPUP_CURRENCY.upper()
    if amount < low:
        raise TopUpError(f"The minimum top-up is {low:,} {currency}")
    if amount > high:
        raise TopUpError(f"The maximum top-up is {high:,} {currency}")


# Starting a top-up ---------------------------------------------------------------------------


@transaction.atomic
def topup_create(
    *,
    lab: Lab,
    amount: Decimal,
    actor: User | None,
    project: Project | None = None,
    save_payment_method: bool = False,
    kind: str = TopUpKind.CHECKOUT,
) -> TopUp:
    """A pending top-up of `amount` (in TOPUP_CURRENCY) for the lab, or straight for one of
    its projects. Nothing is paid or credited yet."""
    amount_check(amount)
    if project is not None and project.lab_id != lab.pk:
        raise TopUpError("The project doesn't belong to the lab")
    currency = settings.TOPUP_CURRENCY
    minor = to_minor(amount, currency=currency)
    return TopUp.objects.create(
        lab=lab,
        project=project,
        kind=kind,
        currency=currency,
        amount_minor=minor,
        credits=credits_for_minor(minor, currency=currency),
        created_by=actor,
        save_payment_method=save_payment_method,
    )


def stripe_customer_ensure(*, lab: Lab, email: str) -> StripeCustomer:
    """The lab's Stripe customer, created on first use and reused; the idempotency key makes
    two concurrent first uses one customer at Stripe, the unique lab one row here. A customer
    the offline test mode made up is replaced by a real one (with its test card) once Stripe's
    keys are set. Raises PaymentProviderRefusedError, saving nothing, when payments are off."""
    customer = StripeCustomer.objects.filter(lab=lab).first()
    if customer is not None and (
        stripe_gateway.test_mode() or not stripe_gateway.is_local(customer.customer_id)
    ):
        return customer
    customer_id = stripe_gateway.customer_create(
        lab_uuid=str(lab.uuid),
        name=lab.name,
        email=email,
        idempotency_key=f"meterbill-lab-{lab.uuid}-customer",
    )
    if customer is not None:
        StripeCustomer.objects.filter(pk=customer.pk, customer_id=customer.customer_id).update(
            customer_id=customer_id,
            payment_method_id="",
            payment_method_label="",
            updated_at=timezone.now(),
        )
        return StripeCustomer.objects.get(pk=customer.pk)
    try:
        with transaction.atomic():
            return StripeCustomer.objects.create(lab=lab, customer_id=customer_id)
    except IntegrityError:
        return StripeCustomer.objects.get(lab=lab)


def payment_method_usable(customer: StripeCustomer | None) -> bool:
    """Whether the lab has a saved payment method auto-recharge can charge: outside the
    offline test mode, not one that test mode made up (Stripe has never heard of it)."""
    if customer is None or not customer.payment_method_id:
        return False
    return stripe_gateway.test_mode() or not (
        stripe_gateway.is_local(customer.customer_id)
        or stripe_gateway.is_local(customer.payment_method_id)
    )


def checkout_start(*, topup: TopUp, success_url: str, cancel_url: str, test_mode_url: str) -> str:
    """Create the top-up's Checkout Session (outside any transaction) and return where to send
    the payer. Calling it again for the same top-up reuses the session."""
    if topup.checkout_url:
        return topup.checkout_url
    payer = topup.created_by
    customer = stripe_customer_ensure(lab=topup.lab, email=payer.email if payer else "")
    target = topup.project.name if topup.project else topup.lab.name
    order = CheckoutOrder(
        topup_uuid=str(topup.uuid),
        lab_uuid=str(topup.lab.uuid),
        customer_id=customer.customer_id,
        currency=topup.currency,
        amount_minor=topup.amount_minor,
        product_name=f"{topup.credits.normalize():f} credits for {target}",
        save_payment_method=topup.save_payment_method,
        success_url=success_url,
        cancel_url=cancel_url,
        test_mode_url=test_mode_url,
    )
    session_id, url = stripe_gateway.checkout_session_create(
        order, idempotency_key=idempotency_key(topup, "checkout")
    )
    TopUp.objects.filter(pk=topup.pk, stripe_session_id__isnull=True).update(
        stripe_session_id=session_id, checkout_url=url, updated_at=timezone.now()
    )
    topup.stripe_session_id, topup.checkout_url = session_id, url
    return url


# What Stripe's events do (each under the top-up's row lock, in the event's transaction) -------


def links_record(*, topup: TopUp, payment: Payment) -> None:
    """Ids and links Stripe told us; never replaces one already known with nothing."""
    for field, value in [
        ("stripe_payment_intent_id", payment.payment_intent_id),
        ("stripe_charge_id", payment.charge_id),
        ("stripe_invoice_id", payment.invoice_id),
        ("receipt_url", payment.receipt_url),
        ("invoice_url", payment.invoice_url),
    ]:
        if value and not getattr(topup, field):
            setattr(topup, field, value)
    topup.save()


def _credit_grant(topup: TopUp) -> Grant:
    paid = amount_format(topup.amount_minor, currency=topup.currency)
    reason = f"Stripe top-up {topup.uuid}: {paid}"
    key = f"stripe-topup:{topup.uuid}"
    if topup.project is not None:
        return services.budget_grant(
            project=topup.project,
            amount=topup.credits,
            source=GrantSource.STRIPE,
            reason=reason,
            actor=topup.created_by,
            idempotency_key=key,
        )
    return services.lab_top_up(
        lab=topup.lab,
        amount=topup.credits,
        source=GrantSource.STRIPE,
        source_ref=str(topup.uuid),
        reason=reason,
        metadata={"topup": str(topup.uuid), "payment_intent": topup.stripe_payment_intent_id},
        actor=topup.created_by,
        idempotency_key=key,
    )


def topup_credit(*, topup: TopUp, payment: Payment) -> bool:
    """Grant the top-up's credits, once: the first paid event wins over pending, failed and
    expired (money was taken); later ones only fill in links. Debts are repaid first; a refund
    or dispute that arrived before the payment is applied right after. Returns whether it
    credited."""
    links_record(topup=topup, payment=payment)
    if topup.status in CREDITED_STATUSES:
        return False
    if topup.refunded_minor or topup.disputed_minor:
        # Its refund arrived first, so the take-back below locks every account of the lab:
        # lock them now, in their id order, before the grant locks the project's budget alone
        # (taking the lab's account after it would deadlock with a budget move).
        services.lab_accounts_lock(topup.lab)
    topup.grant = _credit_grant(topup)
    topup.status = TopUpStatus.PAID
    topup.paid_at = timezone.now()
    topup.save()
    _debts_repay(topup)
    if topup.refunded_minor or topup.disputed_minor:  # its refund arrived first
        topup_refunds_record(topup=topup)
    if topup.save_payment_method and payment.payment_method_id and _may_save_card(topup):
        StripeCustomer.objects.filter(lab=topup.lab).update(
            payment_method_id=payment.payment_method_id,
            payment_method_label=payment.payment_method_label[:100],
            updated_at=timezone.now(),
        )
    if topup.kind == TopUpKind.AUTO:
        AutoRecharge.objects.filter(lab=topup.lab).update(consecutive_failures=0)
    from billing import tasks

    transaction.on_commit(lambda: tasks.topup_receipt_send.delay(topup.pk))
    return True


def _may_save_card(topup: TopUp) -> bool:
    """Whether whoever started the top-up may (still) replace the card auto-recharge charges:
    an owner or admin of the lab, like for setting auto-recharge."""
    if topup.created_by is None:
        return False
    role = (
        Membership.objects.filter(user=topup.created_by, lab=topup.lab)
        .values_list("role", flat=True)
        .first()
    )
    if role in (Role.OWNER, Role.ADMIN):
        return True
    logger.warning(
        "top-up %s: %s may not save a payment method for auto-recharge; card not saved",
        topup.uuid,
        topup.created_by,
    )
    return False


def topup_fail(*, topup: TopUp, message: str, expired: bool = False) -> bool:
    """A pending top-up failed (or its Checkout expired). Auto-recharge counts failures in a row
    and switches itself off at AUTO_RECHARGE_MAX_FAILURES. Returns whether it changed."""
    if topup.status != TopUpStatus.PENDING:
        return False
    topup.status = TopUpStatus.EXPIRED if expired else TopUpStatus.FAILED
    topup.failed_at = timezone.now()
    topup.failure_message = message[:2000]
    topup.save()
    if topup.kind == TopUpKind.AUTO:
        _auto_recharge_failure_count(topup)
    return True


def topup_start_failed(*, topup: TopUp, message: str) -> bool:
    """Stripe refused to start the payment of a pending top-up: it fails, under its row lock."""
    with transaction.atomic():
        locked = TopUp.objects.select_for_update().get(pk=topup.pk)
        return topup_fail(topup=locked, message=message)


def _auto_recharge_failure_count(topup: TopUp) -> None:
    setting = AutoRecharge.objects.select_for_update().filter(lab=topup.lab).first()
    if setting is None:
        return
    setting.consecutive_failures = F("consecutive_failures") + 1
    setting.recharged_after_line = None  # a failed recharge paid nothing: the next may try
    setting.save(update_fields=["consecutive_failures", "recharged_after_line", "updated_at"])
    setting.refresh_from_db(fields=["consecutive_failures"])
    if setting.enabled and setting.consecutive_failures >= settings.AUTO_RECHARGE_MAX_FAILURES:
        setting.enabled = False
        setting.disabled_reason = (
            f"Switched off after {setting.consecutive_failures} failed payments in a row; "
            f"the last: {topup.failure_message or 'declined'}"
        )
        setting.save(update_fields=["enabled", "disabled_reason", "updated_at"])
        from billing import recharge_trigger, tasks

        transaction.on_commit(recharge_trigger.targets_forget)
        transaction.on_commit(lambda: tasks.auto_recharge_disabled_mail.delay(setting.pk))


def topup_refunds_record(*, topup: TopUp, refunded_minor: int = 0) -> None:
    """Stripe's cumulative refunded amount: the largest seen wins, so events in any order
    converge; a credited top-up gives back what it adds."""
    topup.refunded_minor = min(max(topup.refunded_minor, refunded_minor), topup.amount_minor)
    _taken_back_settle(topup)
    if topup.status == TopUpStatus.PAID and topup.refunded_minor >= topup.amount_minor:
        topup.status = TopUpStatus.REFUNDED
    topup.save()


def topup_dispute_record(*, topup: TopUp, dispute: Dispute) -> None:
    """A dispute as Stripe reports it now: while it holds funds back, the credits they bought
    are taken back; once they are with us again (won), or were never withdrawn (an inquiry),
    they are given back. An older copy of it (read before the event that moved it on) changes
    nothing."""
    stale = _dispute_stage(dispute.status) < _dispute_stage(topup.dispute_status)
    if topup.dispute_id == dispute.id and stale:
        return
    if dispute.refunded_minor > topup.refunded_minor:
        # Refunded before the dispute (Stripe refuses it after), its event still on its way: the
        # refund's share is settled as a refund, whichever event comes first.
        topup_refunds_record(topup=topup, refunded_minor=dispute.refunded_minor)
    topup.dispute_id, topup.dispute_reason = dispute.id, dispute.reason[:100]
    topup.dispute_status = dispute.status[:32]
    topup.disputed_minor = min(dispute.withdrawn_minor, topup.amount_minor)
    _taken_back_settle(topup)
    topup.save()


def _dispute_stage(status: str) -> int:
    """Disputes only move forward: an inquiry, then a chargeback, then closed (unknown: a
    dispute recorded before statuses were kept, which any copy may update)."""
    if not status:
        return -1
    if status in DISPUTE_CLOSED:
        return 2
    return 0 if status.startswith("warning_") else 1


def _taken_back_target(topup: TopUp, *, disputed: bool = True) -> Decimal:
    """The credits bought by what Stripe refunded (and, unless not `disputed`, holds back for a
    dispute): a part of the payment takes back the same part of the credits (not at today's
    CREDITS_PER_CURRENCY_UNIT)."""
    owed_minor = topup.refunded_minor + (topup.disputed_minor if disputed else 0)
    return credits_share(topup.credits, min(topup.amount_minor, owed_minor), topup.amount_minor)


def _taken_back_settle(topup: TopUp) -> None:
    """Take back or give back credits until what was taken back matches what Stripe refunded
    or holds back now (from the stored amounts: a refund or dispute that arrived before the
    payment is settled when it is credited). The refunds' share first, then the dispute's, so
    that each take-back is tagged with its cause: a won dispute gives back only its own."""
    if topup.status not in CREDITED_STATUSES:
        return
    refunds = _taken_back_target(topup, disputed=False)
    if refunds > topup.credits_taken_back:
        topup_take_back(topup=topup, reason="refund", target=refunds)
    target = _taken_back_target(topup)
    if target > topup.credits_taken_back:
        topup_take_back(topup=topup, reason="dispute", target=target)
    elif target < topup.credits_taken_back:
        topup_give_back(topup=topup, reason=f"dispute {topup.dispute_status}")


# Entries that return a grant's credits to the system account without the lab using them.
_RETURNED_UNUSED = (EntryType.VOID, EntryType.EXPIRE, EntryType.DEPLETE, EntryType.RELEASE)


def _grant_lines_on(account: LedgerAccount, grant_id: int) -> QuerySet[JournalLine]:
    return JournalLine.objects.filter(account=account, grant_id=grant_id)


def topup_take_back(*, topup: TopUp, reason: str, target: Decimal | None = None) -> Decimal:
    """Take back the credits refunded or disputed so far and not yet taken: what is left of the
    top-up's grant in the lab and its project budgets (not credits held by running jobs); of
    the rest, what the lab used becomes a debt that the lab's next top-ups repay first (credits
    already returned to the system account unused are not owed). Returns the credits taken.
    A part of the payment takes back the same part of the credits it bought (not at today's
    CREDITS_PER_CURRENCY_UNIT). `target`: what should be taken back in all, if not everything
    refunded and disputed."""
    target = _taken_back_target(topup) if target is None else target
    wanted = target - topup.credits_taken_back
    if wanted <= 0 or topup.grant_id is None:
        return Decimal(0)
    system, owned = services.lab_accounts_lock(topup.lab)
    # Never more than an account holds: in a project in debt, other grants cover the debt.
    room = {account.pk: max(account.balance, Decimal(0)) for account in owned}
    order = {account.pk: index for index, account in enumerate(owned)}  # the lab's own first
    rows = GrantBalance.objects.filter(account__in=owned, grant_id=topup.grant_id, balance__gt=0)
    legs: list[Leg] = []
    taken = Decimal(0)
    for row in sorted(rows, key=lambda r: order[r.account_id]):
        part = min(row.balance, room[row.account_id], wanted - taken)
        if part > 0:
            legs += [
                Leg(row.account_id, topup.grant_id, -part),
                Leg(system.pk, topup.grant_id, part),
            ]
            taken += part
    # Only what the lab used is owed: credits of the grant that already went back to the
    # system account unused (voided, expired, depleted, or released from a hold after that) or
    # that earlier refunds took back are not owed again.
    back_to_system = _grant_lines_on(system, topup.grant_id)
    returned = back_to_system.filter(entry__type__in=_RETURNED_UNUSED).aggregate(
        total=Sum("amount")
    )["total"] or Decimal(0)
    taken_before = _chargebacks_kept(system, topup.grant_id)
    owed_before = LabDebt.objects.filter(topup=topup).aggregate(
        total=Sum(F("amount") - F("forgiven"))
    )["total"] or Decimal(0)
    tags = {"topup": str(topup.uuid), "reason": reason}
    if legs:
        entry_post(type=EntryType.CHARGEBACK, legs=legs, reason=f"Stripe {reason}", metadata=tags)
    used = max(target - taken_before - taken - returned, Decimal(0))
    if used > owed_before:
        LabDebt.objects.create(lab=topup.lab, topup=topup, amount=used - owed_before, reason=reason)
        logger.warning(
            "top-up %s: %s credits of a %s were already spent; recorded as the lab's debt",
            topup.uuid,
            used - owed_before,
            reason,
        )
    topup.credits_taken_back = target
    return taken


def _chargebacks_kept(system: LedgerAccount, grant_id: int, reason: str | None = None) -> Decimal:
    """Credits of the grant that refunds and disputes (or those of `reason` only) took back and
    no dispute gave back."""
    taken = _grant_lines_on(system, grant_id).filter(entry__type=EntryType.CHARGEBACK)
    if reason is not None:
        taken = taken.filter(entry__metadata__reason=reason)
    given = _grant_lines_on(system, grant_id).filter(entry__type=EntryType.REINSTATE)
    total = Decimal(0)
    for lines in (taken, given):
        total += lines.aggregate(total=Sum("amount"))["total"] or Decimal(0)
    return total


def topup_give_back(*, topup: TopUp, reason: str) -> Decimal:
    """Give back what disputes took beyond what Stripe refunded or holds back now (a dispute
    won, or an inquiry that withdrew nothing): first what is still open of the debts they
    recorded is forgiven, then the credits they took from the grant go back where the top-up
    put them (the lab, or its project), while the grant can be spent. Credits that had gone
    back unused (expired, voided, depleted) before the dispute counted them are not given
    back; what is owed but cannot be given back this way (a debt repaid already, a grant no
    longer spendable) is logged for an operator to grant by hand. Returns the credits forgiven
    and given back."""
    target_now = _taken_back_target(topup)
    surplus = topup.credits_taken_back - target_now
    if surplus <= 0 or topup.grant_id is None:
        return Decimal(0)
    target = project_ref(topup.project) if topup.project else lab_ref(topup.lab)
    system, account = accounts_lock(SYSTEM, target)  # before the debts, as _debts_repay does
    debts = list(
        LabDebt.objects.select_for_update()
        .filter(topup=topup, reason="dispute")
        .order_by("-created_at", "-id")
    )
    taken = _chargebacks_kept(system, topup.grant_id, reason="dispute")
    due = min(surplus, taken + sum((debt.amount - debt.forgiven for debt in debts), Decimal(0)))
    given = Decimal(0)
    forgiven_ids = []
    for debt in debts:
        part = min(debt.open, due - given)
        if part > 0:
            debt.forgiven += part
            debt.save(update_fields=["forgiven", "updated_at"])
            forgiven_ids.append(debt.pk)
            given += part
    grant = Grant.objects.get(pk=topup.grant_id)
    part = min(taken, due - given)
    if part > 0 and grant.is_spendable_at(timezone.now()):
        entry_post(
            type=EntryType.REINSTATE,
            legs=[Leg(system.pk, grant.pk, -part), Leg(account.pk, grant.pk, part)],
            reason=f"Stripe {reason}",
            metadata={"topup": str(topup.uuid), "reason": reason, "debts_forgiven": forgiven_ids},
        )
        given += part
    if given < due:
        logger.error(
            "top-up %s: %s: %s credits the dispute took could not be given back automatically "
            "(a debt repaid already, or a grant no longer spendable); grant them by hand",
            topup.uuid,
            reason,
            due - given,
        )
    topup.credits_taken_back = target_now  # what is left to give is the operator's (logged)
    return given


def _debts_repay(topup: TopUp) -> Decimal:
    """The lab's open debts, oldest first, taken from the credits this top-up just granted."""
    debts = list(
        LabDebt.objects.select_for_update()
        .filter(DEBT_OPEN, lab=topup.lab)
        .order_by("created_at", "id")
    )
    if not debts or topup.grant is None:
        return Decimal(0)
    target = project_ref(topup.project) if topup.project else lab_ref(topup.lab)
    system, account = accounts_lock(SYSTEM, target)
    left = topup.grant.amount
    repaid = Decimal(0)
    for debt in debts:
        part = min(debt.open, left - repaid)
        if part <= 0:
            break
        debt.repaid += part
        debt.save(update_fields=["repaid", "updated_at"])
        repaid += part
    entry_post(
        type=EntryType.DEBT,
        legs=[Leg(account.pk, topup.grant.pk, -repaid), Leg(system.pk, topup.grant.pk, repaid)],
        reason=f"Debt repaid by top-up {topup.uuid}",
        metadata={"topup": str(topup.uuid), "debts": [d.pk for d in debts if d.repaid]},
    )
    return repaid


# Refunds (operators) -------------------------------------------------------------------------


def topup_refund_request(*, topup: TopUp, amount_minor: int | None = None) -> int:
    """Ask Stripe to refund (all that is not refunded yet, or `amount_minor`); returns the
    minor units asked for. Credits go back when Stripe's charge.refunded event arrives. The
    key includes what was refunded so far, so a double click is one refund. Raises
    PaymentProviderRefusedError when payments are off (no keys, not in the offline test mode),
    or for a test-mode payment once Stripe's keys are set."""
    topup.refresh_from_db()
    if topup.status not in CREDITED_STATUSES or not topup.stripe_payment_intent_id:
        raise TopUpError("Only a paid top-up can be refunded")
    left = topup.amount_minor - topup.refunded_minor
    amount = left if amount_minor is None else amount_minor
    if not 0 < amount <= left:
        raise TopUpError(f"At most {from_minor(left, currency=topup.currency)} can be refunded")
    stripe_gateway.refund_create(
        payment_intent_id=topup.stripe_payment_intent_id,
        amount_minor=amount,
        topup_uuid=str(topup.uuid),
        idempotency_key=idempotency_key(topup, f"refund-{topup.refunded_minor}-{amount}"),
    )
    if stripe_gateway.test_mode():
        from billing import test_mode

        test_mode.charge_refunded(topup=topup, amount_refunded_minor=topup.refunded_minor + amount)
    return amount


def lab_owner_emails(lab: Lab) -> list[str]:
    return list(
        lab.memberships.filter(role=Role.OWNER, user__is_active=True).values_list(
            "user__email", flat=True
        )
    )
