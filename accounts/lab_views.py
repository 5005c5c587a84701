"""Self-service labs: create a lab, add its projects, invite members (nobody joins without
accepting) and change their roles. Anyone signed in creates a lab (and owns it); a lab's owners
and admins manage it; members may leave, and otherwise get 403; outsiders 404. Errors come back
as messages on the lab page (post, redirect, get)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.forms import Form
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from accounts import selectors, services
from accounts.errors import InvitationNotFoundError, MembershipError
from accounts.forms import InviteForm, MemberChangeForm, NameForm, ProjectForm
from accounts.models import Lab, Role, User
from accounts.views import lab_visible
from core.throttle import within_limit


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
    if not within_limit(
        user_id=request.user.pk, action="lab_new", most=settings.LABS_PER_DAY, seconds=86400
    ):
        form.add_error(None, f"At most {settings.LABS_PER_DAY} new labs a day: try tomorrow.")
        return render(request, "app/lab_new.html", {"form": form}, status=429)
    lab = services.lab_with_default_project_create(
        name=form.cleaned_data["name"], owner=request.user
    )
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
def member_invite(request: HttpRequest, lab_id: str) -> HttpResponse:
    lab, _role = _managed_lab(request, lab_id)
    form = InviteForm(request.POST)
    if not form.is_valid():
        return _refused(request, lab, form)
    email, role = form.cleaned_data["email"], form.cleaned_data["role"]
    most = settings.LAB_INVITATIONS_PER_HOUR
    if not within_limit(user_id=request.user.pk, action="invite", most=most, seconds=3600):
        messages.error(request, f"At most {most} invitations an hour: try again later.")
        return redirect("lab_detail", lab_id=lab.uuid)
    try:
        invitation = services.invitation_create(lab=lab, email=email, role=role, by=request.user)
    except MembershipError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            f"Invited {invitation.email} as {Role(role).label.lower()}: they join {lab.name} "
            "when they accept, on their dashboard.",
        )
    return redirect("lab_detail", lab_id=lab.uuid)


@login_required
@require_POST
def invitation_cancel(request: HttpRequest, lab_id: str, invitation_id: str) -> HttpResponse:
    lab, _role = _managed_lab(request, lab_id)
    try:
        invitation = services.invitation_cancel(
            lab=lab, invitation_uuid=invitation_id, by=request.user
        )
    except InvitationNotFoundError as exc:
        raise Http404("No such open invitation") from exc
    messages.success(request, f"Cancelled the invitation of {invitation.email}.")
    return redirect("lab_detail", lab_id=lab.uuid)


@login_required
@require_POST
def invitation_answer(request: HttpRequest, invitation_id: str, answer: str) -> HttpResponse:
    """The invitee accepts or declines an invitation to one of their verified addresses."""
    if answer not in ("accept", "decline"):
        raise Http404("Accept or decline")
    try:
        if answer == "accept":
            try:
                membership, joined = services.invitation_accept(
                    invitation_uuid=invitation_id, user=request.user
                )
            except MembershipError as exc:
                messages.error(request, exc.message)
                return redirect("dashboard")
            name = membership.lab.name
            messages.success(
                request, f"You joined {name}." if joined else f"You were already in {name}."
            )
            return redirect("lab_detail", lab_id=membership.lab.uuid)
        invitation = services.invitation_decline(invitation_uuid=invitation_id, user=request.user)
    except InvitationNotFoundError as exc:
        raise Http404("No such open invitation") from exc
    messages.info(request, f"Declined the invitation to {invitation.lab.name}.")
    return redirect("dashboard")


@login_required
@require_POST
def member_change(request: HttpRequest, lab_id: str, user_id: str) -> HttpResponse:
    """An owner or admin changes a member's role or removes them; any member may leave.
    Leaving or being removed revokes the keys that member made in the lab's projects: the
    lab's credits are no longer theirs to spend."""
    lab = lab_visible(request, lab_id)
    member = User.objects.filter(uuid=user_id, memberships__lab=lab).first()
    form = MemberChangeForm(request.POST)
    leaving = member == request.user and request.POST.get("action") == "remove"
    if not leaving:
        _managed_lab(request, lab_id)
    if member is None:
        raise Http404("Not a member of this lab")
    if not form.is_valid():
        return _refused(request, lab, form)
    try:
        if form.cleaned_data["action"] == "remove":
            revoked = services.membership_remove(lab=lab, user=member, by=request.user)
            plural, who = ("s" if revoked != 1 else ""), ("you" if leaving else "they")
            keys_text = f" and revoked {revoked} API key{plural} {who} made" if revoked else ""
            if leaving:
                messages.success(request, f"You left {lab.name}{keys_text}.")
                return redirect("dashboard")
            messages.success(request, f"Removed {member.email} from {lab.name}{keys_text}.")
        else:
            new_role = form.cleaned_data["role"]
            services.membership_role_set(lab=lab, user=member, role=new_role, by=request.user)
            messages.success(request, f"{member.email} is now {Role(new_role).label.lower()}.")
    except MembershipError as exc:
        messages.error(request, exc.message)
    return redirect("lab_detail", lab_id=lab.uuid)
