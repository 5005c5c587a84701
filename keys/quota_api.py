"""`GET /api/quotas` and `GET /api/quotas/{service}`, with the end user's own key as
`Authorization: Bearer sk_...`: the requests the lab's plan still allows this period.

The names follow the request-quota services this replaces (`remainingRequests`: a list of
`{"<service>": n}` objects for all quotas, or one number for one service); `"*"` is the quota
of every service together. Errors have the shape of /api/v1.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.errors import ApiError, NotFoundError
from keys import quotas, selectors
from keys.api import SLUG
from keys.models import ALL_SERVICES
from keys.quotas import PlanQuotas
from keys.self_api import EndUserKeyView
from keys.services import authorizable_services


class QuotaCountersUnavailable(ApiError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    error_code = "QUOTAS_UNAVAILABLE"
    default_message = "Quotas cannot be read right now; retry shortly."


# camelCase: the wire names of the request-quota services this replaces.
class QuotasOut(serializers.Serializer):
    plan = serializers.CharField(allow_null=True, help_text="The lab's plan; null: none.")
    periodStart = serializers.DateTimeField(allow_null=True)
    periodEnd = serializers.DateTimeField(
        allow_null=True, help_text="When the counts start again from zero."
    )
    remainingRequests = serializers.ListField(
        child=serializers.DictField(child=serializers.IntegerField()),
        help_text='One {"<service>": remaining} object per quota; "*": every service together. '
        "Empty: no quota.",
    )
    limits = serializers.ListField(
        child=serializers.DictField(child=serializers.IntegerField()),
        help_text='One {"<service>": requests per period} object per quota.',
    )


class ServiceQuotaOut(serializers.Serializer):
    plan = serializers.CharField(allow_null=True)
    service = serializers.CharField()
    periodStart = serializers.DateTimeField(allow_null=True)
    periodEnd = serializers.DateTimeField(allow_null=True)
    remainingRequests = serializers.IntegerField(
        allow_null=True,
        help_text="Requests of this service the plan still allows this period (the tighter of "
        "its own quota and the every-service one); null: no quota.",
    )
    limit = serializers.IntegerField(allow_null=True, help_text="That quota's requests a period.")


def quotas_counted(plan_quotas: PlanQuotas | None, now: datetime) -> list[quotas.QuotaLeft]:
    """Each quota with what is counted this period (none without a plan); 503 without Redis."""
    if plan_quotas is None:
        return []
    try:
        return quotas.left(plan_quotas, now)
    except quotas.RateLimiterUnavailable as exc:
        raise QuotaCountersUnavailable() from exc


def period_fields(plan_quotas: PlanQuotas | None, now: datetime) -> dict[str, Any]:
    """periodStart and periodEnd of the period that contains `now` (null without a plan)."""
    if plan_quotas is None:
        return {"periodStart": None, "periodEnd": None}
    _, start, end = plan_quotas.bounds(now)
    return {"periodStart": start, "periodEnd": end}


_UNAUTHORIZED = OpenApiResponse(
    description="UNAUTHORIZED; details.code: key_invalid, key_revoked, key_expired"
)


class QuotaListView(EndUserKeyView):
    @extend_schema(
        operation_id="quotas_list",
        summary="The requests the key's lab's plan still allows this period, per quota",
        responses={200: QuotasOut, 401: _UNAUTHORIZED, 503: OpenApiTypes.OBJECT},
        tags=["quotas"],
    )
    def get(self, request: Request) -> Response:
        now = timezone.now()
        plan_quotas = selectors.plan_quotas(lab_id=request.auth.lab_id)
        left = quotas_counted(plan_quotas, now)
        body = {
            "plan": plan_quotas.plan if plan_quotas else None,
            **period_fields(plan_quotas, now),
            "remainingRequests": [{quota.scope: quota.remaining} for quota in left],
            "limits": [{quota.scope: quota.limit} for quota in left],
        }
        return Response(QuotasOut(body).data)


class ServiceQuotaView(EndUserKeyView):
    @extend_schema(
        operation_id="quotas_service",
        summary="The requests of one service the key's lab's plan still allows this period",
        responses={
            200: ServiceQuotaOut,
            401: _UNAUTHORIZED,
            404: OpenApiResponse(description="ENTITY_NOT_FOUND: no such service"),
            503: OpenApiTypes.OBJECT,
        },
        tags=["quotas"],
    )
    def get(self, request: Request, service: str) -> Response:
        if not SLUG.fullmatch(service) or service not in authorizable_services([service]):
            raise NotFoundError(f"No service '{service}'.")
        now = timezone.now()
        plan_quotas = selectors.plan_quotas(lab_id=request.auth.lab_id)
        scopes = (ALL_SERVICES, service)
        applying = [q for q in quotas_counted(plan_quotas, now) if q.scope in scopes]
        tightest = min(applying, key=lambda quota: quota.remaining, default=None)
        body = {
            "plan": plan_quotas.plan if plan_quotas else None,
            "service": service,
            **period_fields(plan_quotas, now),
            "remainingRequests": tightest.remaining if tightest else None,
            "limit": tightest.limit if tightest else None,
        }
        return Response(ServiceQuotaOut(body).data)
