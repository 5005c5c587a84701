"""The lab page: balance, grants, project budgets and, for owners and admins, budget moves."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.models import Lab, Role
from accounts.views import lab_visible
from billing import selectors, services
from billing.errors import BudgetError, BudgetShortfallError
from billing.forms import BudgetForm

BUDGET_OPERATIONS = [
    ("assign", "Assign", "From the lab's balance to a project."),
    ("reverse", "Reverse", "From a project back to the lab."),
    ("move", "Move", "From one project to another."),
]


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The user's labs with their credits (the lab's, and each project's) and open invitations
    (here, not in accounts, because the credits are billing's)."""
    labs = account_selectors.lab_list(actor=request.user)
    roles = dict(request.user.memberships.values_list("lab_id", "role"))
    rows = [
        {"lab": lab, "role": roles.get(lab.id), "balance": selectors.lab_balance(lab)}
        for lab in labs
    ]
    invitations = account_services.invitations_open_for(request.user)
    return render(request, "app/dashboard.html", {"rows": rows, "invitations": invitations})


def _errors(form: BudgetForm) -> list[str]:
    """Every error of a budget form as a sentence, field errors named by their label."""
    errors = list(form.non_field_errors())
    for name, field_errors in form.errors.items():
        if name != "__all__":
            errors += [f"{form.fields[name].label}: {error}" for error in field_errors]
    return errors


def _render_lab(request: HttpRequest, lab: Lab, form: BudgetForm | None = None) -> HttpResponse:
    role = account_selectors.membership_role(user=request.user, lab=lab)
    balance = selectors.lab_balance(lab)
    members = list(account_selectors.lab_members(actor=request.user, lab=lab))
    context = {
        "lab": lab,
        "role": role,
        "can_manage": account_selectors.lab_role_can_manage(role),
        "balance": balance,
        "project_total": balance.project_total,
        "budget_operations": BUDGET_OPERATIONS,
        "grants": selectors.grant_list(actor=request.user, lab=lab),
        "members": members,
        "owners": sum(1 for membership in members if membership.role == Role.OWNER),
        "roles": Role.choices,
        "invitations": lab.invitations.filter(accepted_at__isnull=True, closed_at__isnull=True),
        "activity": selectors.lab_activity(actor=request.user, lab=lab),
        "form": form,
        "failed_operation": form.data.get("operation") if form is not None else None,
        "form_errors": _errors(form) if form is not None else [],
    }
    return render(request, "app/lab_detail.html", context, status=400 if form is not None else 200)


@login_required
def lab_detail(request: HttpRequest, lab_id: str) -> HttpResponse:
    return _render_lab(request, lab_visible(request, lab_id))


@login_required
def lab_budget(request: HttpRequest, lab_id: str) -> HttpResponse:
    """POST only: one budget move by a lab owner or admin."""
    lab = lab_visible(request, lab_id)
    if request.method != "POST":
        return redirect("lab_detail", lab_id=lab.uuid)
    role = account_selectors.membership_role(user=request.user, lab=lab)
    if not account_selectors.lab_role_can_manage(role):
        raise PermissionDenied("Only the lab's owners and admins move its budget.")
    form = BudgetForm(request.POST, lab=lab)
    if not form.is_valid():
        return _render_lab(request, lab, form)
    data = form.cleaned_data
    project = lab.projects.get(uuid=data["project"])
    try:
        match data["operation"]:
            case "assign":
                services.budget_assign(
                    lab=lab, project=project, amount=data["amount"], actor=request.user
                )
                done = f"Assigned {data['amount']} credits to {project.name}."
            case "reverse":
                services.budget_reverse(
                    lab=lab, project=project, amount=data["amount"], actor=request.user
                )
                done = f"Returned {data['amount']} credits from {project.name} to the lab."
            case _:
                target = lab.projects.get(uuid=data["to_project"])
                services.budget_move(
                    lab=lab,
                    debited=project,
                    credited=target,
                    amount=data["amount"],
                    actor=request.user,
                )
                done = f"Moved {data['amount']} credits from {project.name} to {target.name}."
    except BudgetShortfallError:
        source = "The lab's balance" if data["operation"] == "assign" else project.name
        form.add_error(
            None, f"{source} has less than {data['amount']} credits that can be spent now."
        )
        return _render_lab(request, lab, form)
    except BudgetError as exc:
        form.add_error(None, exc.message)
        return _render_lab(request, lab, form)
    messages.success(request, done)
    return redirect("lab_detail", lab_id=lab.uuid)
