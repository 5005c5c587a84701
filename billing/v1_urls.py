"""Operators' plan routes under /api/v1/."""

from django.urls import path

from billing import plan_api

urlpatterns = [
    path("plans", plan_api.PlanListView.as_view(), name="api_plans"),
    path("labs/<str:lab_id>/plan", plan_api.LabPlanView.as_view(), name="api_lab_plan"),
]
