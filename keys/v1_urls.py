"""Gateways' and platforms' calls under /api/v1/: authorize, settle, keys."""

from django.urls import path

from keys import api

urlpatterns = [
    path("authorize", api.AuthorizeView.as_view(), name="api_authorize"),
    path("usage", api.AuthorizedUsageView.as_view(), name="api_authorized_usage"),
]
