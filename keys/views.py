"""The portal's API keys page: list, create, edit, revoke, rotate.

Members of a key's lab see it; its creator and the lab's owners and admins edit, revoke and
rotate it (others get 403, outsiders 404). A full key is rendered once, in the response to the
POST that made it, with no-store caching; it is never put in the session, a message or a URL.
The forms that create a key or rotate its secret are one-use (core.once): a reload of the page
that shows the secret does not make another key or rotate again, it says what the first POST
made."""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods

from accounts import selectors as account_selectors
from accounts.models import Lab, User
from core.csv_download import csv_response
from core.money import credits_display
from core.once import Claim, once_claim, once_token
from keys import quotas, selectors, services
from keys.errors import KeyNotFoundError, KeySettingsError
from keys.forms import KeyCreateForm, KeyEditForm
from keys.models import ALL_SERVICES, ApiKey, CreditPeriod
from keys.selectors import KeyUsage
from metering.models import Service, ServiceType
from metering.usage_summary import ServiceUsage

PAGE_SIZE = 50
USED_SINCE = {
    "": "in total",
    CreditPeriod.DAILY: "today (UTC)",
    CreditPeriod.WEEKLY: "this week",
    CreditPeriod.MONTHLY: "this month",
}


def duration_display(seconds: int) -> str:
    """The grace period in words: 24 hours, 90 minutes, 45 seconds."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0 and (unit != "day" or seconds > 2 * 86400):
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


@dataclass
class LimitLine:
    scope: str  # "All services" or a slug
    requests_per_minute: int | None
    units_per_minute: int | None


@dataclass
class KeyRow:
    key: ApiKey
    status: str
    usage: KeyUsage
    units: str  # "6,000 tokens on ml-llm · 103 calls on mcp"
    charged: str
    limits: list[LimitLine]
    cap: str | None  # "5.00 monthly, 1.25 used this month"
    grace_until: datetime | None  # the previous secret still works until then
    can_manage: bool


def _cap_text(key: ApiKey, now: datetime) -> str | None:
    if key.credit_limit is None:
        return None
    period = f" {key.get_credit_limit_period_display().lower()}" if key.credit_limit_period else ""
    used = credits_display(selectors.key_credit_used(key, now))
    return (
        f"{credits_display(key.credit_limit)}{period}, "
        f"{used} used {USED_SINCE[key.credit_limit_period]} (open holds included)"
    )


def _limit_lines(key: ApiKey) -> list[LimitLine]:
    own = selectors.key_limits(key)
    lines = []
    for scope in sorted(own, key=lambda scope: (scope != ALL_SERVICES, scope)):
        values = own[scope]
        lines.append(
            LimitLine(
                scope="All services" if scope == ALL_SERVICES else scope,
                requests_per_minute=values["requests_per_minute"],
                units_per_minute=values["units_per_minute"],
            )
        )
    return lines


def _service_units(slug: str, units: int, services: dict[str, Service]) -> str:
    """12,000 tokens: in the service's own unit."""
    if slug not in services:
        return f"{units:,} units"
    return ServiceUsage(service=services[slug], units=Decimal(units)).units_text


def _units_text(usage: KeyUsage, services: dict[str, Service]) -> str:
    """Units per service, each in its own unit (tokens and seconds do not add up)."""
    parts = [
        f"{_service_units(slug, units, services)} on {slug}"
        for slug, units in usage.units_by_service.items()
    ]
    return " · ".join(parts) or "no units"


def _services_of(slugs: Collection[str]) -> dict[str, Service]:
    """The services keys use (authorize serves one-shot services only), by slug."""
    return {
        service.slug: service
        for service in Service.objects.filter(type=ServiceType.ONESHOT, slug__in=slugs)
    }


def _rows(user: User, keys: list[ApiKey]) -> list[KeyRow]:
    now = timezone.now()
    usage = selectors.key_usage_this_month([key.pk for key in keys], now=now)
    services = _services_of({slug for one in usage.values() for slug in one.units_by_service})
    manageable = selectors.keys_manageable(user=user, keys=keys)
    rows = []
    for key in keys:
        in_grace = (
            key.previous_valid_until is not None
            and key.previous_valid_until > now
            and key.revoked_at is None
        )
        rows.append(
            KeyRow(
                key=key,
                status=selectors.key_status(key, now),
                usage=usage[key.pk],
                units=_units_text(usage[key.pk], services),
                charged=credits_display(usage[key.pk].charged),
                limits=_limit_lines(key),
                cap=_cap_text(key, now),
                grace_until=key.previous_valid_until if in_grace else None,
                can_manage=key.pk in manageable,
            )
        )
    return rows


@dataclass(frozen=True)
class LabQuotas:
    lab: Lab
    period_end: datetime
    left: list[quotas.QuotaLeft] | None  # None: the counters cannot be read right now


def _lab_quotas(user: User, now: datetime) -> list[LabQuotas]:
    """The request quotas of the plans of the user's labs, with what is left this period."""
    rows = []
    for lab in account_selectors.lab_list(actor=user).order_by("name", "id"):
        plan_quotas = selectors.plan_quotas(lab_id=lab.pk)
        if plan_quotas is None or not plan_quotas.limits:
            continue
        try:
            left: list[quotas.QuotaLeft] | None = quotas.left(plan_quotas, now)
        except quotas.RateLimiterUnavailable:
            left = None
        rows.append(LabQuotas(lab=lab, period_end=plan_quotas.bounds(now)[2], left=left))
    return rows


@login_required
def key_list(request: HttpRequest) -> HttpResponse:
    keys = (
        selectors.key_list(actor=request.user)
        .select_related("created_by_token", "revoked_by")
        .prefetch_related("limits")
    )
    page = Paginator(keys, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "rows": _rows(request.user, list(page.object_list)),
        "lab_quotas": _lab_quotas(request.user, timezone.now()),
    }
    return render(request, "app/keys.html", context)


ONCE_NEW = "key_new"
STALE_FORM = "This form has expired or was already sent: check your keys, then send it again."
UNAVAILABLE = "Nothing was done: the portal could not check this form just now. Send it again."


def _render_form(request: HttpRequest, form: KeyCreateForm, status: int = 200) -> HttpResponse:
    context = {"form": form, "once": once_token(request, ONCE_NEW)}
    return render(request, "app/keys_new.html", context, status=status)


def _sent_again(request: HttpRequest, claim: Claim, done: str) -> HttpResponse:
    """A one-use form sent a second time (a reload, a double click): nothing is done again."""
    key = None
    if claim.made is not None:
        with contextlib.suppress(KeyNotFoundError):  # no longer theirs to see
            key = selectors.key_get(actor=request.user, key_uuid=claim.made)
    named = f"{key.name} ({key.masked})" if key is not None else "the key"
    messages.info(
        request,
        f"This form was already sent: {named} was {done} then, and its secret shown once. "
        "If you did not copy it, rotate the key.",
    )
    return redirect("key_list")


def _render_secret(
    request: HttpRequest, key: ApiKey, full_key: str, *, rotated: bool
) -> HttpResponse:
    """The one time the full key is shown. No redirect: it lives in this response only."""
    response = render(
        request,
        "app/keys_secret.html",
        {
            "key": key,
            "full_key": full_key,
            "rotated": rotated,
            "grace": duration_display(settings.API_KEY_ROTATION_GRACE_SECONDS),
        },
        status=201 if not rotated else 200,
    )
    add_never_cache_headers(response)
    return response


@login_required
@require_http_methods(["GET", "POST"])
def key_new(request: HttpRequest) -> HttpResponse:
    authorizable = dict(sorted(services.authorizable_services().items()))
    if request.method != "POST":
        return _render_form(request, KeyCreateForm(user=request.user, authorizable=authorizable))
    claim = once_claim(request, ONCE_NEW)
    if claim.spent:
        return _sent_again(request, claim, "created")
    form = KeyCreateForm(request.POST, user=request.user, authorizable=authorizable)
    if not claim.claimed:
        form.is_valid()
        form.add_error(None, UNAVAILABLE if claim.unavailable else STALE_FORM)
        return _render_form(request, form, status=503 if claim.unavailable else 400)
    try:
        if not form.is_valid():
            claim.release()
            return _render_form(request, form, status=400)
        key, full_key = services.key_create(
            project=form.cleaned_data["project"],
            name=form.cleaned_data["name"],
            key_settings=form.key_settings,
            created_by=request.user,
        )
    except KeySettingsError as exc:
        claim.release()
        form.add_settings_errors(exc)
        return _render_form(request, form, status=400)
    except BaseException:
        claim.release()
        raise
    claim.done(str(key.uuid))
    return _render_secret(request, key, full_key, rotated=False)


def _visible_key(request: HttpRequest, key_id: Any) -> ApiKey:
    """The key if the user is a member of its lab: 404 otherwise."""
    try:
        return selectors.key_get(actor=request.user, key_uuid=key_id)
    except KeyNotFoundError as exc:
        raise Http404("API key not found") from exc


def _managed_key(request: HttpRequest, key_id: Any) -> ApiKey:
    """The key if the user may revoke and rotate it: 404 when it is not theirs to see, 403
    when they see it but neither made it nor run its lab."""
    key = _visible_key(request, key_id)
    if not selectors.key_can_manage(user=request.user, key=key):
        raise PermissionDenied("Only the key's creator and the lab's owners and admins may.")
    return key


def _once_rotate(key: ApiKey) -> str:
    return f"key_rotate:{key.uuid}"


def _confirm(request: HttpRequest, key: ApiKey, action: str) -> HttpResponse:
    context = {
        "key": key,
        "action": action,
        "status": selectors.key_status(key, timezone.now()),
        "grace": duration_display(settings.API_KEY_ROTATION_GRACE_SECONDS),
        "once": once_token(request, _once_rotate(key)) if action == "rotate" else None,
    }
    return render(request, "app/keys_confirm.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def key_revoke(request: HttpRequest, key_id: Any) -> HttpResponse:
    """GET: the confirmation; POST: revoke (refused from the next authorize on)."""
    key = _managed_key(request, key_id)
    if request.method != "POST":
        if key.is_revoked:
            messages.info(request, f"{key.name} is already revoked.")
            return redirect("key_list")
        return _confirm(request, key, "revoke")
    if key.is_revoked:
        messages.info(request, f"{key.name} was already revoked.")
    else:
        services.key_revoke(key=key, by=request.user)
        messages.success(request, f"Revoked {key.name} ({key.masked}).")
    return redirect("key_list")


@login_required
@require_http_methods(["GET", "POST"])
def key_rotate(request: HttpRequest, key_id: Any) -> HttpResponse:
    """GET: the confirmation; POST: a new secret, shown once; the old one keeps working for
    the grace period."""
    key = _managed_key(request, key_id)
    claim = once_claim(request, _once_rotate(key)) if request.method == "POST" else None
    if claim is not None and claim.spent:
        return _sent_again(request, claim, "rotated")
    status = selectors.key_status(key, timezone.now())
    if status != "active":
        if claim is not None:
            claim.release()
        messages.error(request, f"{key.name} is {status}: no rotation.")
        return redirect("key_list")
    if claim is None:
        return _confirm(request, key, "rotate")
    if not claim.claimed:
        expired = "That confirmation has expired: confirm the rotation again."
        messages.error(request, UNAVAILABLE if claim.unavailable else expired)
        return redirect("key_rotate", key_id=key.uuid)
    try:
        key, full_key = services.key_rotate(key=key)
    except KeySettingsError as exc:  # revoked since the check above
        claim.release()
        messages.error(request, exc.message)
        return redirect("key_list")
    except BaseException:
        claim.release()
        raise
    claim.done(str(key.uuid))
    return _render_secret(request, key, full_key, rotated=True)


@login_required
@require_http_methods(["GET", "POST"])
def key_edit(request: HttpRequest, key_id: Any) -> HttpResponse:
    """GET: the key's settings in the creation form (without the project); POST: save them."""
    key = _managed_key(request, key_id)
    status = selectors.key_status(key, timezone.now())
    if status != "active":
        messages.error(request, f"{key.name} is {status}: its settings can no longer change.")
        return redirect("key_list")
    authorizable = dict(sorted(services.authorizable_services().items()))
    form = KeyEditForm(
        request.POST if request.method == "POST" else None,
        user=request.user,
        authorizable=authorizable,
        key=key,
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.key_update(
                key=key, name=form.cleaned_data["name"], key_settings=form.key_settings
            )
        except KeySettingsError as exc:
            form.add_settings_errors(exc)
        else:
            messages.success(request, f"Saved the settings of {form.cleaned_data['name']}.")
            return redirect("key_list")
    status_code = 400 if request.method == "POST" else 200
    return render(request, "app/keys_new.html", {"form": form, "key": key}, status=status_code)


@login_required
def key_usage(request: HttpRequest, key_id: Any) -> HttpResponse:
    """A key's last 30 days by day and by service: every member of its lab; others get 404."""
    key = _visible_key(request, key_id)
    days, per_service = selectors.key_usage_days(key)
    events = selectors.key_event_units(key)
    services = _services_of([row.slug for row in per_service])
    used = KeyUsage(0, 0, Decimal(0), {row.slug: row.units for row in per_service if row.units})
    context = {
        "key": key,
        "days": days,
        "services": [(row, _service_units(row.slug, row.units, services)) for row in per_service],
        "events": [
            (service, count, ServiceUsage(service=service, units=Decimal(units)).units_text)
            for service, count, units in events
        ],
        "totals": {
            "requests": sum(day.requests for day in days),
            "units": _units_text(used, services),
            "charged": credits_display(sum((day.charged for day in days), Decimal(0))),
        },
    }
    return render(request, "app/key_usage.html", context)


KEY_USAGE_HEADER = ["day", "service", "unit", "requests", "units", "credits"]


@login_required
def key_usage_csv(request: HttpRequest, key_id: Any) -> HttpResponseBase:
    """The key usage page's 30 days as CSV, a row per day and service."""
    key = _visible_key(request, key_id)
    rows = selectors.key_usage_by_day_and_service(key)
    units = {
        slug: service.unit_label for slug, service in _services_of({r[1] for r in rows}).items()
    }
    rows = [(day, slug, units.get(slug, ""), *figures) for day, slug, *figures in rows]
    filename = f"key-usage-{key.lookup_id}-{timezone.now():%Y%m%d}.csv"
    return csv_response(filename, KEY_USAGE_HEADER, rows)
