"""Pages for signed-in people under /app/."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts import selectors


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    labs = selectors.lab_list(actor=request.user).prefetch_related("projects")
    roles = dict(request.user.memberships.values_list("lab_id", "role"))
    rows = [{"lab": lab, "role": roles.get(lab.id)} for lab in labs]
    return render(request, "app/dashboard.html", {"rows": rows})
