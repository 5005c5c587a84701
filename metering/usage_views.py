"""A lab's usage page: what its projects used and spent, by service, over a window."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone

from accounts.views import lab_visible
from core.csv_download import csv_response
from core.money import decimal_plain
from metering.selectors import discount_current
from metering.usage_export import (
    JOBS_HEADER,
    MAX_JOBS,
    SUMMARY_HEADER,
    jobs_count,
    jobs_rows,
    summary_rows,
)
from metering.usage_summary import WINDOW_KEYS, lab_usage, usage_window


@login_required
def lab_usage_page(request: HttpRequest, lab_id: str) -> HttpResponse:
    """Every member of the lab sees it; others get 404."""
    lab = lab_visible(request, lab_id)
    now = timezone.now()
    window = usage_window(request.GET.get("window", ""), now)
    discount = discount_current(lab=lab, at=now)
    context = {
        "lab": lab,
        "usage": lab_usage(lab=lab, window=window),
        "windows": [usage_window(key, now) for key in WINDOW_KEYS],
        "discount": discount,
        "percent_off": f"{decimal_plain(discount.discount * 100)}%" if discount else None,
    }
    return render(request, "app/lab_usage.html", context)


_EXPORTS = {"jobs": (JOBS_HEADER, jobs_rows), "summary": (SUMMARY_HEADER, summary_rows)}


@login_required
def lab_usage_csv(request: HttpRequest, lab_id: str, table: str) -> HttpResponseBase:
    """The page's window as CSV: `jobs` (every job closed in it) or `summary` (its sums)."""
    lab = lab_visible(request, lab_id)
    if table not in _EXPORTS:
        raise Http404("No such download")
    header, rows = _EXPORTS[table]
    window = usage_window(request.GET.get("window", ""), timezone.now())
    if table == "jobs" and (count := jobs_count(lab, window)) > MAX_JOBS:
        messages.error(
            request,
            f"{window.label} has {count:,} jobs, more than one download holds ({MAX_JOBS:,}):"
            " choose a shorter window, or download the totals.",
        )
        return redirect(f"{reverse('lab_usage', args=[lab.uuid])}?window={window.key}")
    filename = f"usage-{table}-{window.key}-{window.start:%Y%m%d}.csv"
    return csv_response(filename, header, rows(lab, window))
