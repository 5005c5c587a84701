"""The billing pages (balance, top-ups, history, receipts, auto-recharge, low-balance alerts)
and Stripe's webhook.

Every lab member sees the billing page and may top up the lab (paying only adds credits);
owners and admins set auto-recharge and alerts; outsiders get 404 for all of it.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import F
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from accounts import selectors as account_selectors
from accounts.models import Lab
from accounts.views import lab_visible
from billing import (
    auto_recharge,
    balance_alerts,
    selectors,
    stripe_events,
    stripe_gateway,
    test_mode,
    topups,
)
from billing.currency import amount_format, from_minor
from billing.errors import PaymentProviderError, TopUpError, TopUpNotFoundError
from billing.forms import AutoRechargeForm, BalanceAlertForm, TopUpForm
from billing.models import (
    AutoRecharge,
    BalanceAlert,
    StripeCustomer,
    TopUp,
    TopUpKind,
    TopUpStatus,
)
from billing.views import _errors


def _topup_visible(request: HttpRequest, lab: Lab, topup_id: str) -> TopUp:
    try:
        return selectors.topup_get(actor=request.user, lab=lab, topup_uuid=topup_id)
    except (TopUpNotFoundError, ValueError) as exc:
        raise Http404("Top-up not found") from exc


def _managed_lab(request: HttpRequest, lab_id: str, what: str) -> Lab:
    """The lab, for its owners and admins; 403 for other members, 404 for outsiders."""
    lab = lab_visible(request, lab_id)
    role = account_selectors.membership_role(user=request.user, lab=lab)
    if not account_selectors.lab_role_can_manage(role):
        raise PermissionDenied(f"Only the lab's owners and admins {what}.")
    return lab


def _managed_post(
    what: str,
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """A form's POST for the lab's owners and admins, called with the lab; a GET (the address
    bar after a form error) goes to the billing page."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @functools.wraps(view)
        def wrapped(request: HttpRequest, lab_id: str, **kwargs: Any) -> HttpResponse:
            if request.method != "POST":
                return redirect("lab_billing", lab_id=lab_visible(request, lab_id).uuid)
            return view(request, _managed_lab(request, lab_id, what), **kwargs)

        return wrapped

    return decorator


def _auto_recharge_initial(setting: AutoRecharge | None) -> dict[str, object]:
    if setting is None:
        return {"threshold": "10", "amount": "25", "monthly_cap": "100"}
    return {
        "enabled": setting.enabled,
        "threshold": f"{setting.threshold.normalize():f}",  # 100, not 1E+2
        "amount": from_minor(setting.amount_minor, currency=setting.currency),
        "monthly_cap": from_minor(setting.monthly_cap_minor, currency=setting.currency),
        "target": str(setting.project.uuid) if setting.project else "",
    }


def _render_billing(
    request: HttpRequest,
    lab: Lab,
    *,
    topup_form: TopUpForm | None = None,
    recharge_form: AutoRechargeForm | None = None,
    alert_form: BalanceAlertForm | None = None,
    status: int = 200,
) -> HttpResponse:
    role = account_selectors.membership_role(user=request.user, lab=lab)
    setting = AutoRecharge.objects.filter(lab=lab).select_related("project").first()
    customer = StripeCustomer.objects.filter(lab=lab).first()
    context = {
        "lab": lab,
        "role": role,
        "can_manage": account_selectors.lab_role_can_manage(role),
        "balance": selectors.lab_balance(lab),
        "grants": selectors.grant_list(actor=request.user, lab=lab),
        "topups": selectors.topup_list(actor=request.user, lab=lab),
        "debt": selectors.lab_debt(lab=lab),
        "plan": selectors.plan_current(lab=lab),
        "topup_form": topup_form
        or TopUpForm(
            lab=lab,
            can_save_payment_method=account_selectors.lab_role_can_manage(role),
            initial={"preset": "25"},
        ),
        "topup_errors": _errors(topup_form) if topup_form is not None else [],
        "recharge_form": recharge_form
        or AutoRechargeForm(lab=lab, initial=_auto_recharge_initial(setting)),
        "recharge_errors": _errors(recharge_form) if recharge_form is not None else [],
        "auto_recharge": setting,
        "alerts": BalanceAlert.objects.filter(lab=lab)
        .select_related("project")
        .order_by(F("project__name").asc(nulls_first=True), "project_id", "-threshold"),
        "alert_form": alert_form or BalanceAlertForm(lab=lab),
        "alert_errors": _errors(alert_form) if alert_form is not None else [],
        "saved_method": customer.payment_method_label
        if customer is not None and topups.payment_method_usable(customer)
        else "",
        "test_mode": stripe_gateway.test_mode(),
        "payments_off": stripe_gateway.offline() and not stripe_gateway.test_mode(),
        "currency": settings.TOPUP_CURRENCY.upper(),
        "min_amount": f"{settings.TOPUP_MIN_AMOUNT:,}",
        "max_amount": f"{settings.TOPUP_MAX_AMOUNT:,}",
        "credits_per_unit": settings.CREDITS_PER_CURRENCY_UNIT.normalize(),
    }
    return render(request, "app/billing.html", context, status=status)


@login_required
def billing_home(request: HttpRequest) -> HttpResponse:
    """/app/billing/: straight to the only lab's billing, or a chooser."""
    labs = list(account_selectors.lab_list(actor=request.user).order_by("name", "id"))
    if len(labs) == 1:
        return redirect("lab_billing", lab_id=labs[0].uuid)
    rows = [{"lab": lab, "balance": selectors.lab_balance(lab)} for lab in labs]
    return render(request, "app/billing_choose.html", {"rows": rows})


@login_required
def lab_billing(request: HttpRequest, lab_id: str) -> HttpResponse:
    lab = lab_visible(request, lab_id)
    if topup_id := request.GET.get("paid"):
        topup = TopUp.objects.filter(lab=lab, uuid=topup_id).first() if _is_uuid(topup_id) else None
        if topup is not None and topup.status == TopUpStatus.PENDING:
            messages.info(request, "Payment received by Stripe; the credits appear in a moment.")
    return _render_billing(request, lab)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@login_required
def lab_topup(request: HttpRequest, lab_id: str) -> HttpResponse:
    """Start a top-up: the pending row commits first, then Stripe Checkout (or the test-mode
    page) takes the payer. A GET (the address bar after a form error) goes to the billing page."""
    lab = lab_visible(request, lab_id)
    if request.method != "POST":
        return redirect("lab_billing", lab_id=lab.uuid)
    role = account_selectors.membership_role(user=request.user, lab=lab)
    form = TopUpForm(
        request.POST, lab=lab, can_save_payment_method=account_selectors.lab_role_can_manage(role)
    )
    if not form.is_valid():
        return _render_billing(request, lab, topup_form=form, status=400)
    data = form.cleaned_data
    try:
        topup = topups.topup_create(
            lab=lab,
            amount=data["amount"],
            project=data["project"],
            actor=request.user,
            save_payment_method=data["save_payment_method"],
        )
    except TopUpError as exc:
        form.add_error(None, exc.message)
        return _render_billing(request, lab, topup_form=form, status=400)
    billing_url = request.build_absolute_uri(reverse("lab_billing", args=[lab.uuid]))
    try:
        url = topups.checkout_start(
            topup=topup,
            success_url=f"{billing_url}?paid={topup.uuid}",
            cancel_url=billing_url,
            test_mode_url=reverse("topup_test_checkout", args=[lab.uuid, topup.uuid]),
        )
    except PaymentProviderError as exc:
        topups.topup_start_failed(topup=topup, message=exc.message)
        messages.error(request, f"Stripe could not start the payment: {exc.message}")
        return redirect("lab_billing", lab_id=lab.uuid)
    return redirect(url)


@login_required
def topup_test_checkout(request: HttpRequest, lab_id: str, topup_id: str) -> HttpResponse:
    """Offline test mode only: a stand-in for Stripe Checkout that pays (or cancels) locally
    through the same signed webhook path."""
    if not stripe_gateway.test_mode():
        raise Http404("Test mode is off")
    lab = lab_visible(request, lab_id)
    topup = _topup_visible(request, lab, topup_id)
    if topup.kind != TopUpKind.CHECKOUT or not topup.stripe_session_id:
        raise Http404("No checkout for this top-up")
    outcome = request.POST.get("outcome")
    if request.method == "POST" and outcome not in ("pay", "cancel"):
        return HttpResponseBadRequest("outcome must be pay or cancel")
    if request.method == "POST" and topup.status == TopUpStatus.PENDING:
        if outcome == "pay":
            test_mode.checkout_complete(topup=topup)
            messages.success(request, f"Test payment done: {topup.credits:.2f} credits added.")
        else:
            test_mode.checkout_cancel(topup=topup)
            messages.warning(request, "Test checkout cancelled; nothing was paid.")
        return redirect("lab_billing", lab_id=lab.uuid)
    return render(
        request,
        "app/billing_test_checkout.html",
        {
            "lab": lab,
            "topup": topup,
            "amount": amount_format(topup.amount_minor, currency=topup.currency),
        },
    )


@login_required
def topup_receipt(request: HttpRequest, lab_id: str, topup_id: str) -> HttpResponse:
    lab = lab_visible(request, lab_id)
    topup = _topup_visible(request, lab, topup_id)
    if topup.grant_id is None:
        raise Http404("No receipt: this top-up was not paid")
    context = {
        "lab": lab,
        "topup": topup,
        "amount": amount_format(topup.amount_minor, currency=topup.currency),
        "refunded": amount_format(topup.refunded_minor, currency=topup.currency),
        "test_mode": "_local_" in (topup.stripe_session_id or topup.stripe_payment_intent_id or ""),
    }
    return render(request, "app/billing_receipt.html", context)


@_managed_post("set auto-recharge")
def lab_auto_recharge(request: HttpRequest, lab: Lab) -> HttpResponse:
    form = AutoRechargeForm(request.POST, lab=lab)
    if not form.is_valid():
        return _render_billing(request, lab, recharge_form=form, status=400)
    data = form.cleaned_data
    try:
        auto_recharge.auto_recharge_set(
            lab=lab,
            actor=request.user,
            enabled=data["enabled"],
            threshold=data["threshold"],
            amount=data["amount"],
            monthly_cap=data["monthly_cap"],
            project=data["project"],
        )
    except TopUpError as exc:
        form.add_error(None, exc.message)
        return _render_billing(request, lab, recharge_form=form, status=400)
    messages.success(
        request,
        "Auto-recharge is on." if data["enabled"] else "Auto-recharge settings saved (off).",
    )
    return redirect("lab_billing", lab_id=lab.uuid)


@_managed_post("set alerts")
def lab_alert_add(request: HttpRequest, lab: Lab) -> HttpResponse:
    form = BalanceAlertForm(request.POST, lab=lab)
    if not form.is_valid():
        return _render_billing(request, lab, alert_form=form, status=400)
    data = form.cleaned_data
    try:
        balance_alerts.alert_add(
            lab=lab, project=data["project"], threshold=data["threshold"], actor=request.user
        )
    except balance_alerts.BalanceAlertError as exc:
        form.add_error(None, exc.message)
        return _render_billing(request, lab, alert_form=form, status=400)
    messages.success(request, "Alert added: you will get a mail when the balance falls below it.")
    return redirect("lab_billing", lab_id=lab.uuid)


@_managed_post("remove alerts")
def lab_alert_remove(request: HttpRequest, lab: Lab, alert_id: str) -> HttpResponse:
    if not balance_alerts.alert_remove(lab=lab, alert_uuid=alert_id):
        raise Http404("Alert not found")
    messages.success(request, "Alert removed.")
    return redirect("lab_billing", lab_id=lab.uuid)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Stripe's events; the signature, not a session or CSRF token, authenticates them."""
    status = stripe_events.webhook_receive(request.body, request.headers.get("Stripe-Signature"))
    return HttpResponse(status=status)
