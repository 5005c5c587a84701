from django.urls import path

from billing import topup_views, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("labs/<uuid:lab_id>/", views.lab_detail, name="lab_detail"),
    path("labs/<uuid:lab_id>/budget/", views.lab_budget, name="lab_budget"),
    path("billing/", topup_views.billing_home, name="billing_home"),
    path("labs/<uuid:lab_id>/billing/", topup_views.lab_billing, name="lab_billing"),
    path("labs/<uuid:lab_id>/billing/top-up/", topup_views.lab_topup, name="lab_topup"),
    path(
        "labs/<uuid:lab_id>/billing/auto-recharge/",
        topup_views.lab_auto_recharge,
        name="lab_auto_recharge",
    ),
    path("labs/<uuid:lab_id>/billing/alerts/", topup_views.lab_alert_add, name="lab_alert_add"),
    path(
        "labs/<uuid:lab_id>/billing/alerts/<uuid:alert_id>/remove/",
        topup_views.lab_alert_remove,
        name="lab_alert_remove",
    ),
    path(
        "labs/<uuid:lab_id>/billing/top-ups/<uuid:topup_id>/test-checkout/",
        topup_views.topup_test_checkout,
        name="topup_test_checkout",
    ),
    path(
        "labs/<uuid:lab_id>/billing/top-ups/<uuid:topup_id>/receipt/",
        topup_views.topup_receipt,
        name="topup_receipt",
    ),
]
