"""Operators' plans: edit them, put labs on them, end subscriptions. Every grant a plan gives is
made by billing.plans, never here."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest

from billing import plans
from billing.forms import CreditsFormField
from billing.models import Plan, PlanRollover, PlanSubscription
from core.money import MAX_CREDITS


class PlanForm(forms.ModelForm):
    credits = CreditsFormField(help_text="Credits granted every period.")
    rollover_max = CreditsFormField(
        required=False,
        empty_value=None,
        label="Carry-over maximum",
        help_text="Carry over only: at most this many unused credits move to the next period.",
    )

    class Meta:
        model = Plan
        fields = [
            "name",
            "slug",
            "description",
            "credits",
            "period",
            "rollover",
            "rollover_max",
            "periods",
            "category",
            "priority",
            "is_default",
            "active",
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        carry = data.get("rollover") == PlanRollover.CARRY
        if carry and data.get("rollover_max") is None:
            self.add_error("rollover_max", "Carry-over needs a maximum.")
        if not carry and data.get("rollover_max") is not None:
            self.add_error("rollover_max", "Only carry-over takes a maximum; leave it empty.")
        if data.get("periods") == 0:
            self.add_error("periods", "A plan lasts at least one period; empty: it has no end.")
        if data.get("is_default") and not data.get("active"):
            self.add_error("is_default", "The default plan must be active.")
        credits, most_carried = data.get("credits"), data.get("rollover_max") or 0
        if credits is not None and credits + most_carried >= MAX_CREDITS:
            self.add_error(
                "rollover_max" if most_carried else "credits",
                "The credits and the most carried over must be below 10^12 together.",
            )
        return data


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    form = PlanForm
    list_display = [
        "name",
        "slug",
        "credits",
        "period",
        "rollover",
        "rollover_max",
        "periods",
        "category",
        "is_default",
        "active",
        "subscribers",
    ]
    list_filter = ["active", "period", "rollover"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Plan]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                open_subscriptions=Count(
                    "subscriptions", filter=Q(subscriptions__ended_at__isnull=True)
                )
            )
        )

    @admin.display(description="Labs on it", ordering="open_subscriptions")
    def subscribers(self, plan: Plan) -> int:
        return plan.open_subscriptions  # type: ignore[attr-defined]

    def get_readonly_fields(self, request: HttpRequest, obj: Plan | None = None) -> Any:
        if obj is None:
            return []
        # Grants' metadata name the slug; subscribers' periods count in the plan's unit.
        return ["slug", "period"] if obj.subscriptions.exists() else ["slug"]

    def get_prepopulated_fields(self, request: HttpRequest, obj: Plan | None = None) -> Any:
        return self.prepopulated_fields if obj is None else {}

    def has_delete_permission(self, request: HttpRequest, obj: Plan | None = None) -> bool:
        # A plan any lab was ever on stays, for its grants' history: make it inactive instead.
        return obj is None or not obj.subscriptions.exists()


class PlanSubscriptionForm(forms.ModelForm):
    class Meta:
        model = PlanSubscription
        fields = ["lab", "plan", "project"]
        help_texts = {
            "lab": "The plan the lab is on now (if any) ends; its credits stay until its period "
            "ends.",
            "project": "Receives the plan's credits. Empty: the lab's Default project.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["plan"].queryset = Plan.objects.filter(active=True)
        self.fields["project"].required = False

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        lab, project = data.get("lab"), data.get("project")
        if lab is not None and project is not None and project.lab_id != lab.pk:
            self.add_error("project", "This project belongs to another lab.")
        if lab is not None and project is None and not lab.projects.exists():
            self.add_error("project", "The lab has no project to receive the credits.")
        current = lab.plan_subscriptions.filter(ended_at__isnull=True).first() if lab else None
        plan = data.get("plan")
        same_plan = (
            current is not None
            and plan is not None
            and current.plan_id == plan.pk
            and not current.term_over
        )
        if same_plan and (project is None or project.pk == current.project_id):
            self.add_error("plan", "The lab is already on this plan.")
        return data

    def validate_constraints(self, exclude: Any = None) -> None:
        pass  # the lab's current plan is ended by plans.plan_subscribe, not refused


@admin.register(PlanSubscription)
class PlanSubscriptionAdmin(admin.ModelAdmin):
    list_display = ["lab", "plan", "project", "period_start", "period_end", "ended_at"]
    list_filter = ["plan", ("ended_at", admin.EmptyFieldListFilter)]
    search_fields = ["lab__name", "lab__uuid", "uuid", "plan__name"]
    autocomplete_fields = ["lab", "project"]
    list_select_related = ["lab", "plan", "project"]
    actions = ["end"]
    readonly_fields = [
        "uuid",
        "lab",
        "plan",
        "project",
        "started_at",
        "period_index",
        "period_start",
        "period_end",
        "grant",
        "ended_at",
        "created_by",
        "created_by_token",
        "ended_by",
        "ended_by_token",
        "created_at",
    ]

    def get_form(
        self, request: HttpRequest, obj: PlanSubscription | None = None, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = PlanSubscriptionForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else PlanSubscriptionForm.Meta.fields

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: PlanSubscription, form: Any, change: bool
    ) -> None:
        if change:
            return  # a subscription never changes; end it, or put the lab on another plan
        data = form.cleaned_data
        subscription = plans.plan_subscribe(
            lab=data["lab"],
            plan=data["plan"],
            project=data["project"],
            actor=request.user,  # type: ignore[arg-type]
        )
        obj.pk = subscription.pk
        obj.refresh_from_db()

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        pass  # nothing related to save: the service wrote everything

    @admin.action(
        description="End selected subscriptions (no more renewals)", permissions=["change"]
    )
    def end(self, request: HttpRequest, queryset: QuerySet[PlanSubscription]) -> None:
        ended = [
            plans.plan_end(subscription=subscription, actor=request.user)  # type: ignore[arg-type]
            for subscription in queryset
        ]
        self.message_user(
            request,
            f"Ended {len(ended)} subscription(s); this period's credits stay until it ends.",
            messages.SUCCESS,
        )
