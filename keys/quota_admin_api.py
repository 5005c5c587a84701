"""Operators' request-quota routes, where the request-quota services this replaces keep them:
`GET /api/admin/quotas/{service}/{lab_id}` reads a lab's quotas that apply to a service, with
the requests counted this period; `DELETE` of the same path starts the count of that quota
again from zero (`*` as the service: the every-service quota), for a lab that ran out.

Operator tokens only (no lab, the `plans` scope), as for the plans API: a lab's own token must
not reset its lab's quotas. Errors have the shape of /api/v1.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.authentication import ServiceTokenAuthentication
from accounts.models import Lab
from billing.plan_api import OperatorToken, PlansScope
from core.errors import NotFoundError
from keys import quotas, selectors
from keys.api import SLUG
from keys.models import ALL_SERVICES
from keys.quota_api import QuotaCountersUnavailable, period_fields, quotas_counted
from keys.quotas import PlanQuotas
from keys.services import authorizable_services, quota_reset


class QuotaUsedOut(serializers.Serializer):
    scope = serializers.CharField(help_text='A service slug, or "*": every service together.')
    limit = serializers.IntegerField(help_text="Requests a period.")
    used = serializers.IntegerField(help_text="Requests counted this period.")
    remaining = serializers.IntegerField()


# camelCase where the user route (/api/quotas/{service}) has the same field.
class AdminQuotaOut(serializers.Serializer):
    lab = serializers.UUIDField()
    plan = serializers.CharField(allow_null=True, help_text="The lab's plan; null: none.")
    service = serializers.CharField()
    periodStart = serializers.DateTimeField(allow_null=True)
    periodEnd = serializers.DateTimeField(allow_null=True)
    remainingRequests = serializers.IntegerField(
        allow_null=True,
        help_text="What the tightest quota below still allows this period; null: no quota.",
    )
    limit = serializers.IntegerField(allow_null=True)
    quotas = QuotaUsedOut(
        many=True,
        help_text='The quotas that apply: the service\'s own and "*" (for "*": that one).',
    )


class QuotaNotFoundError(NotFoundError):
    default_message = "The lab's plan has no such quota"


_ERRORS = {
    401: OpenApiResponse(description="No or an invalid service token"),
    403: OpenApiResponse(description="Not an operator token with the `plans` scope"),
    404: OpenApiResponse(description="ENTITY_NOT_FOUND: no such lab or service"),
    503: OpenApiTypes.OBJECT,
}


def _service_checked(service: str) -> str:
    if service != ALL_SERVICES and (
        not SLUG.fullmatch(service) or service not in authorizable_services([service])
    ):
        raise NotFoundError(f"No service '{service}'.")
    return service


def _answer(lab: Lab, service: str, plan_quotas: PlanQuotas | None, now: datetime) -> Response:
    scopes = {service} if service == ALL_SERVICES else {service, ALL_SERVICES}
    applying = [q for q in quotas_counted(plan_quotas, now) if q.scope in scopes]
    tightest = min(applying, key=lambda quota: quota.remaining, default=None)
    body = {
        "lab": lab.uuid,
        "plan": plan_quotas.plan if plan_quotas else None,
        "service": service,
        **period_fields(plan_quotas, now),
        "remainingRequests": tightest.remaining if tightest else None,
        "limit": tightest.limit if tightest else None,
        "quotas": [
            {"scope": q.scope, "limit": q.limit, "used": q.used, "remaining": q.remaining}
            for q in applying
        ],
    }
    return Response(AdminQuotaOut(body).data)


class AdminQuotaView(APIView):
    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [PlansScope, OperatorToken]

    @extend_schema(
        operation_id="admin_quota_retrieve",
        summary="A lab's request quotas that apply to a service, with what is used this period",
        responses={200: AdminQuotaOut, **_ERRORS},
        tags=["quotas"],
    )
    def get(self, request: Request, service: str, lab_id: str) -> Response:
        service = _service_checked(service)
        lab = account_selectors.lab_get(actor=request.auth, lab_uuid=lab_id)
        return _answer(lab, service, selectors.plan_quotas(lab_id=lab.pk), timezone.now())

    @extend_schema(
        operation_id="admin_quota_reset",
        summary="Start this period's count of a lab's quota for a service (or \"*\") from zero",
        responses={
            200: AdminQuotaOut,
            **_ERRORS,
            404: OpenApiResponse(
                description="ENTITY_NOT_FOUND: no such lab, or its plan has no such quota"
            ),
        },
        tags=["quotas"],
    )
    def delete(self, request: Request, service: str, lab_id: str) -> Response:
        lab = account_selectors.lab_get(actor=request.auth, lab_uuid=lab_id)
        plan_quotas = selectors.plan_quotas(lab_id=lab.pk)
        now = timezone.now()
        try:
            found = plan_quotas is not None and quota_reset(
                plan_quotas=plan_quotas, scope=service, actor=request.auth, at=now
            )
        except quotas.RateLimiterUnavailable as exc:
            raise QuotaCountersUnavailable() from exc
        if not found:
            raise QuotaNotFoundError(f"The lab's plan has no quota for '{service}'")
        return _answer(lab, service, plan_quotas, now)
