"""Auto-recharge: pay with the saved card when a debit takes a lab's balance under a threshold.

Started from billing/recharge_trigger.py after a debit commits, and by the sweep. At most one
payment is in flight per lab: the check runs under the lab's setting row lock, and the database
refuses a second pending auto-recharge top-up (a partial unique index). The payment itself is
an off-session PaymentIntent created by a task after commit; its credits arrive only through
the webhook, like every payment's.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone

from accounts.models import Lab, Project, User
from billing import selectors, stripe_gateway, topups
from billing.currency import credits_for_minor, from_minor, to_minor
from billing.errors import (
    PaymentDeclinedError,
    PaymentProviderError,
    PaymentProviderRefusedError,
    TopUpError,
)
from billing.models import (
    AccountType,
    AutoRecharge,
    EntryType,
    JournalLine,
    LedgerAccount,
    StripeCustomer,
    TopUp,
    TopUpKind,
    TopUpStatus,
)

logger = logging.getLogger(__name__)

# An auto-recharge payment not sent after this long is sent again (same idempotency key); one
# never sent within a day is given up (Stripe forgets idempotency keys after 24 hours).
RESEND_AFTER = timedelta(minutes=5)
GIVE_UP_AFTER = timedelta(hours=23)
# What a lab's spending takes from the target: charges, holds and its own budget moves. Not
# refunds, disputes, debt repayments, expiries or an operator's depletion: they are not a
# reason to charge the card again.
SPENDING = (
    EntryType.CHARGE,
    EntryType.RESERVE,
    EntryType.ASSIGN,
    EntryType.REVERSE,
    EntryType.MOVE,
)


@transaction.atomic
def auto_recharge_set(
    *,
    lab: Lab,
    actor: User,
    enabled: bool,
    threshold: Decimal,
    amount: Decimal,
    monthly_cap: Decimal,
    project: Project | None = None,
) -> AutoRecharge:
    """Save a lab's auto-recharge. Switching it on needs a payment method saved during a
    Checkout; it also clears the failure count."""
    topups.amount_check(amount)
    if project is not None and project.lab_id != lab.pk:
        raise TopUpError("The project doesn't belong to the lab")
    if threshold < 0:
        raise TopUpError("The threshold cannot be negative")
    if monthly_cap < amount:
        raise TopUpError("The monthly cap must be at least the recharge amount")
    customer = StripeCustomer.objects.filter(lab=lab).first()
    if enabled and not topups.payment_method_usable(customer):
        raise TopUpError(
            "Save a payment method first: top up once with “save for auto-recharge” ticked"
        )
    currency = settings.TOPUP_CURRENCY
    setting, _ = AutoRecharge.objects.select_for_update().update_or_create(
        lab=lab,
        defaults={
            "project": project,
            "enabled": enabled,
            "threshold": threshold,
            "currency": currency,
            "amount_minor": to_minor(amount, currency=currency),
            "monthly_cap_minor": to_minor(monthly_cap, currency=currency),
            "updated_by": actor,
            "recharged_after_line": None,  # new settings may pay at once
            **({"consecutive_failures": 0, "disabled_reason": ""} if enabled else {}),
        },
    )
    from billing import recharge_trigger

    transaction.on_commit(recharge_trigger.targets_forget)
    if enabled:
        transaction.on_commit(lambda: recharge_start(setting_id=setting.pk))
    return setting


def _target_account_id(setting: AutoRecharge) -> int | None:
    """The watched account: the lab's own, or one project's budget."""
    if setting.project_id:
        where = {"type": AccountType.PROJECT, "project_id": setting.project_id}
    else:
        where = {"type": AccountType.LAB, "lab_id": setting.lab_id}
    return LedgerAccount.objects.filter(**where).values_list("pk", flat=True).first()


def _spent_since_mark(setting: AutoRecharge, account_id: int) -> bool:
    """Whether the lab spent from the target since it was last seen at or above the threshold
    or a recharge restored it (always true when neither happened since the settings were saved
    or a payment failed)."""
    if setting.recharged_after_line is None:
        return True
    return JournalLine.objects.filter(
        account_id=account_id,
        id__gt=setting.recharged_after_line,
        amount__lt=0,
        entry__type__in=SPENDING,
    ).exists()


def month_spent_minor(lab: Lab, *, now: datetime | None = None) -> int:
    """What auto-recharge paid or is paying this calendar month (UTC)."""
    start = (now or timezone.now()).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    spent = TopUp.objects.filter(
        lab=lab,
        kind=TopUpKind.AUTO,
        created_at__gte=start,
        status__in=[TopUpStatus.PENDING, TopUpStatus.PAID, TopUpStatus.REFUNDED],
    ).aggregate(total=Sum("amount_minor"))["total"]
    return spent or 0


def recharge_start(*, setting_id: int) -> TopUp | None:
    """If the target's balance is under the threshold, the lab spent from it since it was last
    seen at or above it (or restored), no payment is in flight and the monthly cap allows it:
    a pending auto-recharge top-up (see `_payment_minor` for its size), and its payment task
    after commit."""
    with transaction.atomic():
        setting = (
            AutoRecharge.objects.select_for_update(of=("self",))
            .select_related("lab", "project")
            .filter(pk=setting_id, enabled=True)
            .first()
        )
        if setting is None:
            return None
        account_id = _target_account_id(setting)
        if account_id is None:
            return None
        # The newest line before the balance: a debit committing between the two reads is then
        # past the mark and counts as spending, rather than lost under it.
        newest_line = (
            JournalLine.objects.filter(account_id=account_id).aggregate(Max("id"))["id__max"] or 0
        )
        balance = LedgerAccount.objects.values_list("balance", flat=True).get(pk=account_id)
        if balance >= setting.threshold:
            # Seen above it: what takes it under from here must be spending to be recharged.
            _mark(setting, newest_line)
            return None
        if not _spent_since_mark(setting, account_id):
            return None
        if TopUp.objects.filter(
            lab=setting.lab, kind=TopUpKind.AUTO, status=TopUpStatus.PENDING
        ).exists():
            return None
        owed = selectors.lab_debt(lab=setting.lab)  # the payment repays it first
        minor = _payment_minor(setting, balance - owed, month_spent_minor(setting.lab))
        if minor == 0:
            logger.info("auto-recharge of lab %s: monthly cap reached", setting.lab.uuid)
            return None
        topup = topups.topup_create(
            lab=setting.lab,
            project=setting.project,
            amount=from_minor(minor, currency=setting.currency),
            actor=None,
            kind=TopUpKind.AUTO,
        )
        # Restored: the next waits for spending. Kept short by the cap or the top-up maximum:
        # the next check pays the rest, if the cap allows.
        restores = balance - owed + topup.credits >= setting.threshold
        _mark(setting, newest_line if restores else None)
        from billing import tasks

        transaction.on_commit(lambda: tasks.auto_recharge_pay.delay(topup.pk))
    logger.info("auto-recharge of lab %s started: top-up %s", setting.lab.uuid, topup.uuid)
    return topup


def _mark(setting: AutoRecharge, line_id: int | None) -> None:
    if setting.recharged_after_line != line_id:
        setting.recharged_after_line = line_id
        setting.save(update_fields=["recharged_after_line", "updated_at"])


def _payment_minor(setting: AutoRecharge, balance: Decimal, spent_minor: int) -> int:
    """The amount, or the smallest whole multiple of it whose credits bring `balance` back to
    the threshold in one payment (a spend of 50 under a threshold of 100 with an amount of 10
    pays 50 once, not 10 five times); never past the monthly cap or the top-up maximum. 0: the
    cap allows no payment."""
    step = setting.amount_minor
    per_step = credits_for_minor(step, currency=setting.currency)
    gap = setting.threshold - balance
    wanted = int((gap / per_step).to_integral_value(ROUND_CEILING)) if per_step > 0 else 1
    wanted = max(wanted, 1)
    while per_step > 0 and credits_for_minor(wanted * step, currency=setting.currency) < gap:
        wanted += 1  # the credits of a sum may round below the sum of rounded credits
    allowed = (setting.monthly_cap_minor - spent_minor) // step
    # At least one: an amount above a lowered maximum is refused by topup_create, by name.
    largest = max(int(settings.TOPUP_MAX_AMOUNT // from_minor(step, currency=setting.currency)), 1)
    return step * max(0, min(wanted, allowed, largest))


def recharge_pay(*, topup_id: int) -> str | None:
    """Send a pending auto-recharge top-up's payment to Stripe (no transaction is open). Safe
    to run twice: the idempotency key makes a second send the same PaymentIntent. A decline, or
    a refusal that no retry can change (payments off, a bad request), fails the top-up at once
    and counts toward switching auto-recharge off; success is credited when the webhook says
    so. Stripe being unreachable raises PaymentProviderError (the task tries again)."""
    topup = TopUp.objects.select_related("lab", "project").filter(pk=topup_id).first()
    if topup is None or topup.status != TopUpStatus.PENDING or topup.kind != TopUpKind.AUTO:
        return None
    customer = StripeCustomer.objects.filter(lab=topup.lab).first()
    if not topups.payment_method_usable(customer):
        _fail(topup.pk, "No saved payment method", None)
        return None
    try:
        intent_id = stripe_gateway.off_session_payment_create(
            topup_uuid=str(topup.uuid),
            lab_uuid=str(topup.lab.uuid),
            customer_id=customer.customer_id,
            payment_method_id=customer.payment_method_id,
            currency=topup.currency,
            amount_minor=topup.amount_minor,
            description=f"Auto-recharge: {topup.credits.normalize():f} credits",
            idempotency_key=topups.idempotency_key(topup, "auto-recharge"),
        )
    except (PaymentDeclinedError, PaymentProviderRefusedError) as exc:
        _fail(topup.pk, exc.message, (exc.details or {}).get("payment_intent"))
        return None
    TopUp.objects.filter(pk=topup.pk, stripe_payment_intent_id__isnull=True).update(
        stripe_payment_intent_id=intent_id, updated_at=timezone.now()
    )
    if stripe_gateway.test_mode():
        from billing import test_mode

        topup.refresh_from_db()
        test_mode.payment_succeeded(topup=topup)
    return intent_id


@transaction.atomic
def _fail(topup_id: int, message: str, intent_id: str | None) -> None:
    topup = TopUp.objects.select_for_update(of=("self",)).select_related("lab").get(pk=topup_id)
    if intent_id and not topup.stripe_payment_intent_id:
        topup.stripe_payment_intent_id = intent_id
    topups.topup_fail(topup=topup, message=message)


def auto_recharge_sweep(*, now: datetime | None = None) -> int:
    """Check every lab with auto-recharge on (a debit may have been missed by a stale list),
    send payments that a killed task never sent, give up on those a day old. Returns how many
    recharges it started or resent. One lab's refusal or Stripe being down for one payment is
    logged and does not stop the others (the next sweep tries again)."""
    now = now or timezone.now()
    started = 0
    switched_on = AutoRecharge.objects.filter(enabled=True).order_by("pk")
    for setting_id in switched_on.values_list("pk", flat=True):
        try:
            started += recharge_start(setting_id=setting_id) is not None
        except TopUpError as exc:
            logger.warning("auto-recharge %s could not start: %s", setting_id, exc.message)
    unsent = (
        TopUp.objects.filter(
            kind=TopUpKind.AUTO,
            status=TopUpStatus.PENDING,
            stripe_payment_intent_id__isnull=True,
            created_at__lte=now - RESEND_AFTER,
        )
        .order_by("pk")
        .values_list("pk", "created_at")
    )
    for topup_id, created_at in unsent:
        if created_at <= now - GIVE_UP_AFTER:
            _fail(topup_id, "The payment could not be sent", None)
        else:
            try:
                recharge_pay(topup_id=topup_id)
            except PaymentProviderError as exc:
                logger.warning("auto-recharge top-up %s not sent: %s", topup_id, exc.message)
                continue
            started += 1
    return started
