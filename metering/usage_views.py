"""A lab's usage page: what its projects used and spent, by service, over a window."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from accounts.views import lab_visible
from metering.usage_summary import WINDOW_KEYS, lab_usage, usage_window


@login_required
def lab_usage_page(request: HttpRequest, lab_id: str) -> HttpResponse:
    """Every member of the lab sees it; others get 404."""
    lab = lab_visible(request, lab_id)
    now = timezone.now()
    window = usage_window(request.GET.get("window", ""), now)
    context = {
        "lab": lab,
        "usage": lab_usage(lab=lab, window=window),
        "windows": [usage_window(key, now) for key in WINDOW_KEYS],
    }
    return render(request, "app/lab_usage.html", context)
