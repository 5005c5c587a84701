"""`GET /api/v1/key`: the end user's own key as `Authorization: Bearer sk_...`: its limits,
usage, remaining credit cap, the project's available credits and what they buy per service,
and the request quotas of the lab's plan.

Errors have the shape of the rest of /api/v1: `{"error_code", "message", "details"}`; a refused
key's 401 names why in `details.code`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import authentication, exceptions, serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.selectors import project_balances
from core.accounting import UUIDField
from core.money import credits_quantize
from keys import quotas, selectors
from keys.authorize import (
    UNITS_MAX,
    Code,
    KeyRow,
    key_row,
    limits_in_force,
    parse_key,
    secret_valid,
)
from keys.caps import cap_period_start, cap_remaining
from keys.management_api import KeyLimitOut
from keys.models import ALL_SERVICES, ApiKey, CreditPeriod
from keys.services import LIMIT_FIELDS, authorizable_services
from metering.cost import Tier, usage_cost
from metering.errors import MissingPriceError
from metering.selectors import discount_rate, price_current, price_tiers

ZERO = Decimal(0)


class KeyAuthenticationFailed(exceptions.AuthenticationFailed):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer sk_<lookup>_<secret>`: the key itself, checked as authorize checks
    it (constant-time, the previous secret during a rotation's grace period). The principal is
    anonymous; `request.auth` is the key's row."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[AnonymousUser, KeyRow] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        keyword, _, raw = header.strip().partition(" ")
        if not header or keyword.lower() != self.keyword.lower():
            return None
        now = timezone.now()
        parsed = parse_key(raw.strip())
        row = key_row(parsed[0], "", now) if parsed else None
        if parsed is None or row is None or not secret_valid(row, parsed[1], now):
            raise KeyAuthenticationFailed("Unknown API key.", Code.KEY_INVALID)
        if row.revoked_at is not None:
            raise KeyAuthenticationFailed("This API key was revoked.", Code.KEY_REVOKED)
        if row.expires_at is not None and row.expires_at <= now:
            raise KeyAuthenticationFailed("This API key has expired.", Code.KEY_EXPIRED)
        return AnonymousUser(), row

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "keys.self_api.ApiKeyAuthentication"
    name = "endUserKey"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The end user's API key: `Authorization: Bearer sk_<lookup>_<secret>`.",
        }


class EndUserKey(BasePermission):
    message = "An end user's API key is required: Authorization: Bearer sk_..."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, KeyRow)


def _period_end(period: str, start: datetime | None) -> datetime | None:
    if start is None:
        return None
    if period == CreditPeriod.DAILY:
        return start + timedelta(days=1)
    if period == CreditPeriod.WEEKLY:
        return start + timedelta(days=7)
    if period == CreditPeriod.MONTHLY:
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return None


def _cost(tiers: list[Tier], units: int, discount: Decimal) -> Decimal:
    return credits_quantize(usage_cost(tiers, 0, units, discount))  # as authorize prices it


def units_affordable(tiers: list[Tier], discount: Decimal, budget: Decimal) -> int | None:
    """The most units one authorize call can hold with `budget` credits: the largest n with
    cost(n) <= budget, n at most UNITS_MAX (a request is priced from zero on the tiers, as
    authorize prices it). None: the price is zero, credits do not bound it."""
    most = _cost(tiers, UNITS_MAX, discount)
    if most == 0:
        return None
    budget = max(budget, ZERO)
    if most <= budget:
        return UNITS_MAX
    low, high = 0, UNITS_MAX  # cost(low) <= budget < cost(high); cost never falls as n grows
    while high - low > 1:
        middle = (low + high) // 2
        if _cost(tiers, middle, discount) <= budget:
            low = middle
        else:
            high = middle
    return low


class UsageOut(serializers.Serializer):
    requests = serializers.IntegerField()
    units = serializers.IntegerField(help_text="Actual units of the requests settled so far.")
    charged = serializers.DecimalField(max_digits=24, decimal_places=6)


class UsagePeriodsOut(serializers.Serializer):
    today = UsageOut()
    this_month = UsageOut()


class CreditCapOut(serializers.Serializer):
    limit = serializers.DecimalField(max_digits=24, decimal_places=6)
    period = serializers.CharField(
        allow_null=True, help_text="daily, weekly, monthly; null: the cap never resets."
    )
    period_start = serializers.DateTimeField(allow_null=True)
    resets_at = serializers.DateTimeField(allow_null=True)
    used = serializers.DecimalField(max_digits=24, decimal_places=6)
    remaining = serializers.DecimalField(max_digits=24, decimal_places=6)


class ProjectCreditsOut(serializers.Serializer):
    id = UUIDField()
    available = serializers.DecimalField(
        max_digits=24,
        decimal_places=6,
        help_text="What the project can reserve now (below zero: a debt).",
    )


class ServiceAllowanceOut(serializers.Serializer):
    service = serializers.CharField()
    name = serializers.CharField()
    unit = serializers.CharField()
    limits = KeyLimitOut(help_text="This service's limits in force: the key's own where tighter.")
    priced = serializers.BooleanField(help_text="False: authorize refuses it for now.")
    units_affordable = serializers.IntegerField(
        allow_null=True,
        help_text="The most units one request can be authorized for with the credits left "
        "(the smaller of the key's cap and the project's credits); null: free.",
    )


class PlanQuotaOut(serializers.Serializer):
    service = serializers.CharField(help_text='A service, or "*": every service together.')
    limit = serializers.IntegerField(help_text="Authorized requests a plan period.")
    remaining = serializers.IntegerField(
        allow_null=True, help_text="Left this period; null: the counters cannot be read now."
    )


class PlanQuotasOut(serializers.Serializer):
    plan = serializers.CharField(help_text="The slug of the lab's plan.")
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField(help_text="When the counts start again from zero.")
    quotas = PlanQuotaOut(many=True, help_text="Empty: the plan limits no requests.")


class KeySelfOut(serializers.Serializer):
    id = UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    expires_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    all_services = serializers.BooleanField(help_text="True: every service, present and future.")
    limits = KeyLimitOut(help_text="The key-wide limits (`*`), shared by all its services.")
    usage = UsagePeriodsOut()
    credit_limit = CreditCapOut(allow_null=True)
    project = ProjectCreditsOut()
    services = ServiceAllowanceOut(many=True)
    plan_quotas = PlanQuotasOut(
        allow_null=True, help_text="The request quotas of the lab's plan; null: no plan."
    )


def _plan_quotas(lab_id: int, now: datetime) -> dict[str, Any] | None:
    plan_quotas = selectors.plan_quotas(lab_id=lab_id)
    if plan_quotas is None:
        return None
    _, start, end = plan_quotas.bounds(now)
    try:
        left: list[Any] = quotas.left(plan_quotas, now)
        counted = {quota.scope: quota.remaining for quota in left}
    except quotas.RateLimiterUnavailable:
        counted = {}
    return {
        "plan": plan_quotas.plan,
        "period_start": start,
        "period_end": end,
        "quotas": [
            {"service": scope, "limit": limit, "remaining": counted.get(scope)}
            for scope, limit in plan_quotas.limits
        ],
    }


def _usage(usage: selectors.KeyUsage) -> dict[str, Any]:
    return {"requests": usage.requests, "units": usage.units, "charged": str(usage.charged)}


def key_overview(row: KeyRow, now: datetime) -> dict[str, Any]:
    """Everything GET /api/v1/key answers, for a key already authenticated."""
    key = ApiKey.objects.select_related("project__lab").prefetch_related("limits").get(pk=row.id)
    project = key.project
    own = selectors.key_limits(key)
    row = replace(  # all its scopes, where authorize reads the one service's
        row,
        key_limits=[
            [scope, values["requests_per_minute"], values["units_per_minute"]]
            for scope, values in own.items()
        ],
    )

    cap, cap_overspent = None, False
    budget = project_balances([project])[0].spendable
    available = budget
    if key.credit_limit is not None:
        period = cap_period_start(key.credit_limit_period, now)
        remaining = cap_remaining(key.pk, now)
        cap = {
            "limit": str(key.credit_limit),
            "period": key.credit_limit_period or None,
            "period_start": period,
            "resets_at": _period_end(key.credit_limit_period, period),
            "used": str(key.credit_limit - remaining),
            "remaining": str(max(remaining, ZERO)),
        }
        budget = min(budget, remaining)
        cap_overspent = remaining < 0

    discount = discount_rate(lab=project.lab, at=now)
    services = []
    for slug, service in sorted(authorizable_services(key.services).items()):
        in_force = limits_in_force(
            replace(
                row,
                default_requests=service.key_requests_per_minute,
                default_units=service.key_units_per_minute,
            ),
            slug,
        )
        scope = next((limit for limit in in_force if limit.scope == slug), None)
        try:
            price = price_current(service=service, lab=project.lab, at=now)
        except MissingPriceError:
            affordable: int | None = 0
            priced = False
        else:
            affordable = units_affordable(price_tiers(price), discount, budget)
            priced = True
        if cap_overspent:
            affordable = 0  # authorize refuses even a free request once the cap is overspent
        services.append(
            {
                "service": slug,
                "name": service.name,
                "unit": service.unit_label,
                "limits": {
                    "requests_per_minute": scope.requests_per_minute if scope else None,
                    "units_per_minute": scope.units_per_minute if scope else None,
                },
                "priced": priced,
                "units_affordable": affordable,
            }
        )

    key_wide = own.get(ALL_SERVICES, {})
    return {
        "id": str(key.uuid),
        "name": key.name,
        "prefix": f"{ApiKey.PREFIX}{key.lookup_id}",
        "expires_at": key.expires_at,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "all_services": key.services is None,
        "limits": {name: key_wide.get(name) for name in LIMIT_FIELDS},
        "usage": {
            "today": _usage(selectors.key_usage_today([key.pk], now=now)[key.pk]),
            "this_month": _usage(selectors.key_usage_this_month([key.pk], now=now)[key.pk]),
        },
        "credit_limit": cap,
        "project": {"id": str(project.uuid), "available": str(available)},
        "services": services,
        "plan_quotas": _plan_quotas(project.lab_id, now),
    }


class EndUserKeyView(APIView):
    """A view for the end user's own key; a refused key's 401 names why in `details.code`.
    Reading does not count as a use (last_used_at is not touched)."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [EndUserKey]

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(exc, KeyAuthenticationFailed) and isinstance(response.data, dict):
            response.data["details"] = {"code": exc.reason}
        return response


class KeySelfView(EndUserKeyView):
    """`GET /api/v1/key` with the end user's own key."""

    @extend_schema(
        operation_id="api_key_self",
        summary="The calling end-user key: limits, usage, credit cap, what credits buy",
        responses={
            200: KeySelfOut,
            401: OpenApiResponse(
                description="UNAUTHORIZED; details.code: key_invalid, key_revoked, key_expired"
            ),
        },
        tags=["keys"],
    )
    def get(self, request: Request) -> Response:
        now = timezone.now()
        return Response(KeySelfOut(key_overview(request.auth, now)).data)
