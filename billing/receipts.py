"""Mails about payments: a receipt for every credited top-up, and a notice to the lab's owners
when auto-recharge switches itself off. Sent by tasks after the transaction that caused them."""

from __future__ import annotations

import logging

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from billing import stripe_gateway, topups
from billing.currency import amount_format
from billing.models import CREDITED_STATUSES, AutoRecharge, TopUp, TopUpKind
from core.mail import people_mail
from core.money import credits_display

logger = logging.getLogger(__name__)


def _links_refresh(topup: TopUp) -> None:
    """Stripe's receipt and invoice links, if the webhook did not have them yet (an invoice is
    finalized shortly after its payment)."""
    if stripe_gateway.offline() or (topup.receipt_url and topup.invoice_url):
        return
    if topup.stripe_session_id:
        payment = stripe_gateway.session_payment({"id": topup.stripe_session_id})
    elif topup.stripe_payment_intent_id:
        payment = stripe_gateway.payment_intent_payment({"id": topup.stripe_payment_intent_id})
    else:
        return
    updates = {}
    if payment.receipt_url and not topup.receipt_url:
        updates["receipt_url"] = payment.receipt_url
    if payment.invoice_url and not topup.invoice_url:
        updates["invoice_url"] = payment.invoice_url
    if updates:
        TopUp.objects.filter(pk=topup.pk).update(**updates, updated_at=timezone.now())
        for field, value in updates.items():
            setattr(topup, field, value)


def receipt_send(*, topup_id: int) -> bool:
    """Mail the receipt of a credited top-up to whoever paid (the lab's owners for an
    auto-recharge), once: the send is claimed with a conditional update first."""
    topup = TopUp.objects.select_related("lab", "project", "created_by").get(pk=topup_id)
    if topup.status not in CREDITED_STATUSES or topup.receipt_sent_at:
        return False
    _links_refresh(topup)
    recipients = (
        [topup.created_by.email]
        if topup.created_by and topup.kind == TopUpKind.CHECKOUT
        else topups.lab_owner_emails(topup.lab)
    )
    claimed = TopUp.objects.filter(pk=topup.pk, receipt_sent_at__isnull=True).update(
        receipt_sent_at=timezone.now()
    )
    if not claimed or not recipients:
        return False
    receipt_path = reverse("topup_receipt", args=[topup.lab.uuid, topup.uuid])
    context = {
        "topup": topup,
        "paid": amount_format(topup.amount_minor, currency=topup.currency),
        "receipt_link": settings.PORTAL_BASE_URL + receipt_path,
        "test_mode": topup.stripe_session_id and topup.stripe_session_id.startswith("cs_local_"),
    }
    try:
        people_mail(
            f"Receipt: {context['paid']} for {credits_display(topup.credits)} credits",
            render_to_string("app/billing_receipt_mail.txt", context),
            recipients,
        )
    except Exception:
        # Nothing went out: give the claim back so the task's retry (SMTP and OSError
        # included, billing/tasks.py) sends it.
        TopUp.objects.filter(pk=topup.pk).update(receipt_sent_at=None)
        raise
    return True


def auto_recharge_disabled_send(*, setting_id: int) -> bool:
    setting = AutoRecharge.objects.select_related("lab").get(pk=setting_id)
    recipients = topups.lab_owner_emails(setting.lab)
    if setting.enabled or not recipients:
        return False
    link = settings.PORTAL_BASE_URL + reverse("lab_billing", args=[setting.lab.uuid])
    people_mail(
        f"Auto-recharge switched off for {setting.lab.name}",
        f"{setting.disabled_reason}\n\nCheck your payment method and switch it on again: {link}\n",
        recipients,
    )
    logger.info("auto-recharge of lab %s switched off; owners told", setting.lab.uuid)
    return True
