"""`GET /api/admin/labs/{lab_id}/usage/{year}/{month}`: what a lab used in a calendar month
(UTC), per service, per project and per day, from the usage rollups (rebuilt every minute).

An operator route beside the quota routes (keys/quota_admin_api.py), with their auth: operator
tokens with the `plans` scope. Errors have the shape of /api/v1.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.authentication import ServiceTokenAuthentication
from billing.plan_api import OperatorToken, PlansScope
from core.errors import InvalidRequestError
from metering.usage_summary import lab_usage, month_window

FIRST_YEAR, LAST_YEAR = 2000, 9998  # the month after LAST_YEAR's December is still a date

_CREDITS = {"max_digits": 24, "decimal_places": 6}


class ServiceMonthOut(serializers.Serializer):
    service = serializers.CharField(allow_null=True, help_text="null: charges of no service.")
    unit = serializers.CharField(allow_null=True, help_text="The unit of `units`: token, ...")
    units = serializers.DecimalField(max_digits=40, decimal_places=0)
    jobs = serializers.IntegerField(help_text="Jobs closed in the month.")
    credits = serializers.DecimalField(**_CREDITS, help_text="Charged, less refunds.")


class ProjectMonthOut(serializers.Serializer):
    project = serializers.UUIDField()
    name = serializers.CharField()
    credits = serializers.DecimalField(**_CREDITS)


class DayOut(serializers.Serializer):
    date = serializers.DateField()
    credits = serializers.DecimalField(**_CREDITS)


class LabMonthOut(serializers.Serializer):
    lab = serializers.UUIDField()
    year = serializers.IntegerField()
    month = serializers.IntegerField()
    credits = serializers.DecimalField(**_CREDITS)
    jobs = serializers.IntegerField()
    services = ServiceMonthOut(many=True)
    projects = ProjectMonthOut(many=True)
    days = DayOut(many=True)


class LabMonthUsageView(APIView):
    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [PlansScope, OperatorToken]

    @extend_schema(
        operation_id="admin_lab_usage_month",
        summary="What a lab used in a calendar month (UTC): per service, project and day",
        responses={
            200: LabMonthOut,
            400: OpenApiResponse(description="INVALID_REQUEST: no such month"),
            401: OpenApiResponse(description="No or an invalid service token"),
            403: OpenApiResponse(description="Not an operator token with the `plans` scope"),
            404: OpenApiResponse(description="ENTITY_NOT_FOUND: no such lab"),
        },
        tags=["usage"],
    )
    def get(self, request: Request, lab_id: str, year: int, month: int) -> Response:
        if not (FIRST_YEAR <= year <= LAST_YEAR and 1 <= month <= 12):
            raise InvalidRequestError(
                f"No such month: the year is {FIRST_YEAR} to {LAST_YEAR}, the month 1 to 12."
            )
        lab = account_selectors.lab_get(actor=request.auth, lab_uuid=lab_id)
        usage = lab_usage(lab=lab, window=month_window(year, month), recent_jobs=False)
        body = {
            "lab": lab.uuid,
            "year": year,
            "month": month,
            "credits": usage.credits,
            "jobs": usage.jobs,
            "services": [
                {
                    "service": row.service.slug if row.service else None,
                    "unit": row.service.unit_label if row.service else None,
                    "units": row.units,
                    "jobs": row.jobs,
                    "credits": row.credits,
                }
                for row in usage.by_service
            ],
            "projects": [
                {"project": row.project.uuid, "name": row.project.name, "credits": row.credits}
                for row in usage.by_project
            ],
            "days": [{"date": bar.start.date(), "credits": bar.credits} for bar in usage.bars],
        }
        return Response(LabMonthOut(body).data)
