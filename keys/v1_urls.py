"""Gateways' and platforms' calls under /api/v1/: authorize, settle, keys."""

from django.urls import path

from keys import api, management_api, self_api

urlpatterns = [
    path("authorize", api.AuthorizeView.as_view(), name="api_authorize"),
    path("usage", api.AuthorizedUsageView.as_view(), name="api_authorized_usage"),
    path("keys", management_api.KeyListView.as_view(), name="api_keys"),
    path("keys/<str:key_id>", management_api.KeyDetailView.as_view(), name="api_key_detail"),
    path("key", self_api.KeySelfView.as_view(), name="api_key_self"),
]
