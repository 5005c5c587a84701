"""The portal's API keys pages, under /app/."""

from django.urls import path

from keys import views

urlpatterns = [
    path("keys/", views.key_list, name="key_list"),
    path("keys/new/", views.key_new, name="key_new"),
    path("keys/<uuid:key_id>/edit/", views.key_edit, name="key_edit"),
    path("keys/<uuid:key_id>/usage/", views.key_usage, name="key_usage"),
    path("keys/<uuid:key_id>/usage.csv", views.key_usage_csv, name="key_usage_csv"),
    path("keys/<uuid:key_id>/revoke/", views.key_revoke, name="key_revoke"),
    path("keys/<uuid:key_id>/rotate/", views.key_rotate, name="key_rotate"),
]
