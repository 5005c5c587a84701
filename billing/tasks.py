"""Celery tasks of billing: thin, each calls the function that does the work."""

from __future__ import annotations

import smtplib
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from billing import auto_recharge, balance_alerts, plans, receipts, sweeps
from billing.errors import PaymentProviderError
from core.tasks import RETRY_ON_DB_ERRORS

# Stripe unreachable or a database hiccup: try again later; every Stripe write is idempotent.
RETRY_ON_PROVIDER_ERRORS = {
    **RETRY_ON_DB_ERRORS,
    "autoretry_for": (*RETRY_ON_DB_ERRORS["autoretry_for"], PaymentProviderError),
}
# A mail server that is down or drops the connection: nothing went out (receipt_send gives its
# claim back), so try again, from half a minute up to an hour apart, for several hours.
RETRY_ON_MAIL_ERRORS = {
    **RETRY_ON_PROVIDER_ERRORS,
    "autoretry_for": (
        *RETRY_ON_PROVIDER_ERRORS["autoretry_for"],
        smtplib.SMTPException,
        OSError,  # refused connections, timeouts, TLS errors
    ),
    "retry_backoff": 30,
    "retry_backoff_max": 3600,
    "max_retries": 10,
}


RENEW_AHEAD_MAX = timedelta(minutes=10)


@shared_task(name="billing.grants_expire", **RETRY_ON_DB_ERRORS)
def grants_expire() -> int:
    return sweeps.grants_expire()


@shared_task(name="billing.plan_periods_renew", **RETRY_ON_DB_ERRORS)
def plan_periods_renew() -> int:
    renewed = plans.plan_periods_renew()
    # A period ending before the next sweep renews at its end, not up to a sweep later (one
    # that falls between two sweeps' windows still renews at the next sweep). A second after
    # the end, so a worker whose clock is a little behind finds the period over; at most
    # RENEW_AHEAD_MAX ahead, well inside the broker's redelivery timeout for unacked tasks.
    period = settings.CELERY_BEAT_SCHEDULE["plan-periods-renew"]["schedule"]
    ahead = min(timedelta(seconds=period), RENEW_AHEAD_MAX)
    for subscription_id, period_end in plans.periods_ending(now=timezone.now(), within=ahead):
        plan_renew.apply_async(args=[subscription_id], eta=period_end + timedelta(seconds=1))
    return renewed


@shared_task(name="billing.plan_renew", **RETRY_ON_DB_ERRORS)
def plan_renew(subscription_id: int) -> bool:
    return plans.plan_renew(subscription_id=subscription_id)


@shared_task(name="billing.ledger_audit")
def ledger_audit() -> int:
    return len(sweeps.ledger_audit_report())


@shared_task(name="billing.topup_receipt_send", **RETRY_ON_MAIL_ERRORS)
def topup_receipt_send(topup_id: int) -> bool:
    return receipts.receipt_send(topup_id=topup_id)


@shared_task(name="billing.auto_recharge_pay", **RETRY_ON_PROVIDER_ERRORS)
def auto_recharge_pay(topup_id: int) -> str | None:
    return auto_recharge.recharge_pay(topup_id=topup_id)


@shared_task(name="billing.auto_recharge_disabled_mail", **RETRY_ON_MAIL_ERRORS)
def auto_recharge_disabled_mail(setting_id: int) -> bool:
    return receipts.auto_recharge_disabled_send(setting_id=setting_id)


@shared_task(name="billing.auto_recharge_sweep", **RETRY_ON_DB_ERRORS)
def auto_recharge_sweep() -> int:
    return auto_recharge.auto_recharge_sweep()


@shared_task(name="billing.balance_alerts_sweep", **RETRY_ON_DB_ERRORS)
def balance_alerts_sweep() -> int:
    return balance_alerts.balance_alerts_sweep()


@shared_task(name="billing.balance_alert_mail", **RETRY_ON_MAIL_ERRORS)
def balance_alert_mail(alert_id: int, fallen_at: str) -> bool:
    return balance_alerts.balance_alert_send(alert_id=alert_id, fallen_at=fallen_at)
