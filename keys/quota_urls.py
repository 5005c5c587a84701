"""The request-quota routes at /api/quotas and /api/admin/..., where clients of request-quota
services look."""

from django.urls import path

from keys import quota_admin_api, quota_api
from metering import usage_month_api

urlpatterns = [
    path("quotas", quota_api.QuotaListView.as_view(), name="api_quotas"),
    path("quotas/<str:service>", quota_api.ServiceQuotaView.as_view(), name="api_quota_service"),
    path(
        "admin/quotas/<str:service>/<str:lab_id>",
        quota_admin_api.AdminQuotaView.as_view(),
        name="api_admin_quota",
    ),
    path(
        "admin/labs/<str:lab_id>/usage/<int:year>/<int:month>",
        usage_month_api.LabMonthUsageView.as_view(),
        name="api_admin_lab_usage_month",
    ),
]
