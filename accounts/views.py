"""Pages for signed-in people under /app/."""

from __future__ import annotations

from django.http import Http404, HttpRequest

from accounts import selectors
from accounts.errors import LabNotFoundError
from accounts.models import Lab


def lab_visible(request: HttpRequest, lab_id: str) -> Lab:
    """The lab if the signed-in user may see it; 404 otherwise (outsiders learn nothing)."""
    try:
        return selectors.lab_get(actor=request.user, lab_uuid=lab_id)
    except LabNotFoundError as exc:
        raise Http404("Lab not found") from exc
