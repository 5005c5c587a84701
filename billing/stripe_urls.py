"""Stripe's webhook, mounted at /billing/ (no session, no CSRF: the signature authenticates)."""

from django.urls import path

from billing import topup_views

urlpatterns = [
    path("stripe/webhook/", topup_views.stripe_webhook, name="stripe_webhook"),
]
