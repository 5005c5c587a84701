"""Pages for signed-in people under /app/."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from accounts import selectors
from accounts.errors import LabNotFoundError


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    labs = selectors.lab_list(actor=request.user).prefetch_related("projects")
    roles = dict(request.user.memberships.values_list("lab_id", "role"))
    rows = [{"lab": lab, "role": roles.get(lab.id)} for lab in labs]
    return render(request, "app/dashboard.html", {"rows": rows})


@login_required
def lab_detail(request: HttpRequest, lab_id: str) -> HttpResponse:
    try:
        lab = selectors.lab_get(actor=request.user, lab_uuid=lab_id)
    except LabNotFoundError as exc:
        raise Http404("Lab not found") from exc
    context = {
        "lab": lab,
        "role": selectors.membership_role(user=request.user, lab=lab),
        "projects": selectors.project_list(actor=request.user, lab=lab),
        "members": selectors.lab_members(actor=request.user, lab=lab),
    }
    return render(request, "app/lab_detail.html", context)
