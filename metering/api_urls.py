"""Accounting-service paths under /api/accounting/ (accounts and budgets: billing/api_urls.py)."""

from django.urls import path

from metering import api, report_api, usage_api

urlpatterns = [
    path("price", api.PriceView.as_view()),
    path("discount", api.DiscountView.as_view()),
    path("discount/virtual-lab/<str:vlab_id>", api.LabDiscountsView.as_view()),
    path("discount/virtual-lab/<str:vlab_id>/current", api.CurrentDiscountView.as_view()),
    path("estimate/oneshot", api.EstimateView.as_view()),
    path("reservation/oneshot", api.OneshotReservationView.as_view()),
    path("reservation/longrun", api.LongrunReservationView.as_view()),
    path("reservation/oneshot/<str:job_id>", api.ReleaseView.as_view()),
    path("reservation/longrun/<str:job_id>", api.LongrunReleaseView.as_view()),
    path("usage/oneshot", usage_api.OneshotUsageView.as_view()),
    path("usage/longrun", usage_api.LongrunUsageView.as_view()),
    path("usage/storage", usage_api.StorageUsageView.as_view()),
    path("report/system", report_api.SystemReportView.as_view()),
    path("report/virtual-lab/<str:vlab_id>", report_api.LabReportView.as_view()),
    path("report/project/<str:proj_id>", report_api.ProjectReportView.as_view()),
    path("job/longrun/open", report_api.LongrunOpenView.as_view()),
]
