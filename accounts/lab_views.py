"""Self-service labs: create a lab, add its projects, add members and change their roles.
Anyone signed in creates a lab (and owns it); a lab's owners and admins manage it; members
get 403, outsiders 404. Errors come back as messages on the lab page (post, redirect, get)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.forms import Form
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from accounts import selectors, services
from accounts.errors import MembershipError
from accounts.forms import MemberAddForm, MemberChangeForm, NameForm, ProjectForm
from accounts.models import Lab, Role, User
from accounts.views import lab_visible


def _managed_lab(request: HttpRequest, lab_id: str) -> tuple[Lab, str | None]:
    lab = lab_visible(request, lab_id)
    role = selectors.membership_role(user=request.user, lab=lab)
    if not selectors.lab_role_can_manage(role):
        raise PermissionDenied("Only the lab's owners and admins manage its projects and members.")
    return lab, role


def _refused(request: HttpRequest, lab: Lab, form: Form) -> HttpResponse:
    for field, errors in form.errors.items():
        label = "" if field == "__all__" else f"{form.fields[field].label or field}: "
        for error in errors:
            messages.error(request, f"{label}{error}")
    return redirect("lab_detail", lab_id=lab.uuid)


@login_required
@require_http_methods(["GET", "POST"])
def lab_new(request: HttpRequest) -> HttpResponse:
    form = NameForm(request.POST or None)
    if request.method != "POST" or not form.is_valid():
        status = 400 if request.method == "POST" else 200
        return render(request, "app/lab_new.html", {"form": form}, status=status)
    with transaction.atomic():
        lab = services.lab_create(name=form.cleaned_data["name"], owner=request.user)
        services.project_create(lab=lab, name=services.DEFAULT_PROJECT_NAME)
    messages.success(request, f"Created {lab.name}, with a project named Default.")
    return redirect("lab_detail", lab_id=lab.uuid)


@login_required
@require_POST
def project_new(request: HttpRequest, lab_id: str) -> HttpResponse:
    lab, _role = _managed_lab(request, lab_id)
    form = ProjectForm(request.POST, lab=lab)
    if not form.is_valid():
        return _refused(request, lab, form)
    project = services.project_create(lab=lab, name=form.cleaned_data["name"])
    messages.success(request, f"Created the project {project.name}.")
    return redirect("lab_detail", lab_id=lab.uuid)


@login_required
@require_POST
def member_add(request: HttpRequest, lab_id: str) -> HttpResponse:
    lab, role = _managed_lab(request, lab_id)
    form = MemberAddForm(request.POST, lab=lab)
    if not form.is_valid():
        return _refused(request, lab, form)
    user, new_role = form.cleaned_data["email"], form.cleaned_data["role"]
    if new_role == Role.OWNER and role != Role.OWNER:
        messages.error(request, "Only an owner makes someone an owner.")
        return redirect("lab_detail", lab_id=lab.uuid)
    services.membership_add(lab=lab, user=user, role=new_role)
    messages.success(request, f"Added {user.email} as {Role(new_role).label.lower()}.")
    return redirect("lab_detail", lab_id=lab.uuid)


@login_required
@require_POST
def member_change(request: HttpRequest, lab_id: str, user_id: str) -> HttpResponse:
    lab, role = _managed_lab(request, lab_id)
    member = User.objects.filter(uuid=user_id, memberships__lab=lab).first()
    if member is None:
        raise Http404("Not a member of this lab")
    form = MemberChangeForm(request.POST)
    if not form.is_valid():
        return _refused(request, lab, form)
    try:
        if form.cleaned_data["action"] == "remove":
            services.membership_remove(lab=lab, user=member, by_role=role)
            messages.success(request, f"Removed {member.email} from {lab.name}.")
        else:
            new_role = form.cleaned_data["role"]
            services.membership_role_set(lab=lab, user=member, role=new_role, by_role=role)
            messages.success(request, f"{member.email} is now {Role(new_role).label.lower()}.")
    except MembershipError as exc:
        messages.error(request, exc.message)
    return redirect("lab_detail", lab_id=lab.uuid)
