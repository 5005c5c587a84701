"""The request-quota routes at /api/quotas, where clients of request-quota services look."""

from django.urls import path

from keys import quota_api

urlpatterns = [
    path("quotas", quota_api.QuotaListView.as_view(), name="api_quotas"),
    path("quotas/<str:service>", quota_api.ServiceQuotaView.as_view(), name="api_quota_service"),
]
