"""Pages for signed-in people under /app/."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from accounts import selectors, services
from accounts.errors import LabNotFoundError
from accounts.models import Lab


def lab_visible(request: HttpRequest, lab_id: str) -> Lab:
    """The lab if the signed-in user may see it; 404 otherwise (outsiders learn nothing)."""
    try:
        return selectors.lab_get(actor=request.user, lab_uuid=lab_id)
    except LabNotFoundError as exc:
        raise Http404("Lab not found") from exc


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    labs = selectors.lab_list(actor=request.user).prefetch_related("projects")
    roles = dict(request.user.memberships.values_list("lab_id", "role"))
    rows = [{"lab": lab, "role": roles.get(lab.id)} for lab in labs]
    invitations = services.invitations_open_for(request.user)
    return render(request, "app/dashboard.html", {"rows": rows, "invitations": invitations})
