"""Our API for services and gateways under /api/v1/ (labs, projects: accounts/api_urls.py)."""

from django.urls import path

from metering import ingestion_api

urlpatterns = [
    path("usage/events", ingestion_api.usage_events, name="api_usage_events"),
]
