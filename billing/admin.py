"""Operators' view of the money: balances on each lab, grants they add or void, a read-only
journal. Every money action here goes through billing.services and records the operator."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet, Sum
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts.admin import LabAdmin
from accounts.models import Lab
from billing import selectors, services, topups
from billing.currency import amount_format
from billing.errors import PaymentProviderError, TopUpError
from billing.forms import CreditsFormField
from billing.models import (
    AutoRecharge,
    BalanceAlert,
    Grant,
    GrantCategory,
    GrantSource,
    JournalEntry,
    JournalLine,
    LabDebt,
    LedgerAccount,
    StripeCustomer,
    StripeEvent,
    TopUp,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class GrantInline(admin.TabularInline):
    model = Grant
    fields = ["category", "amount", "priority", "effective_at", "expires_at", "voided_at", "source"]
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


admin.site.unregister(Lab)


@admin.register(Lab)
class LabBillingAdmin(LabAdmin):
    readonly_fields = [*LabAdmin.readonly_fields, "balances"]
    inlines = [*LabAdmin.inlines, GrantInline]

    @admin.display(description="Balances")
    def balances(self, lab: Lab) -> str:
        if lab.pk is None:
            return "—"
        state = selectors.lab_balance(lab)
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((p.project.name, p.balance, p.reserved) for p in state.projects),
        )
        return format_html(
            "Lab: <strong>{}</strong> (spendable now: {})<table><tr><th>Project</th>"
            "<th>Budget</th><th>Held</th></tr>{}</table>",
            state.balance,
            state.spendable,
            rows,
        )


class OperatorGrantForm(forms.ModelForm):
    KINDS = [
        (GrantCategory.PROMOTIONAL, "Promotional grant"),
        (GrantCategory.PAID, "Manual top-up (paid outside Stripe)"),
    ]
    category = forms.ChoiceField(choices=KINDS, label="Kind")
    amount = CreditsFormField(label="Credits")
    priority = forms.IntegerField(
        required=False, min_value=0, max_value=32767, help_text="Lower burns first; empty: default"
    )
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=True)

    class Meta:
        model = Grant
        fields = ["lab", "category", "amount", "priority", "effective_at", "expires_at", "reason"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["effective_at"].required = False
        self.fields["effective_at"].help_text = "Empty: now. Not spendable before this time."

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        expires_at, effective_at = data.get("expires_at"), data.get("effective_at")
        if expires_at and expires_at <= (effective_at or timezone.now()):
            self.add_error("expires_at", "The expiry must be after the grant takes effect.")
        return data


class VoidForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}))


@admin.register(Grant)
class GrantAdmin(admin.ModelAdmin):
    list_display = [
        "lab",
        "category",
        "amount",
        "priority",
        "effective_at",
        "expires_at",
        "status",
        "source",
    ]
    list_filter = ["category", "source", ("voided_at", admin.EmptyFieldListFilter), "expires_at"]
    search_fields = ["lab__name", "lab__uuid", "uuid", "source_ref", "reason"]
    autocomplete_fields = ["lab"]
    list_select_related = ["lab"]
    actions = ["void"]
    readonly_fields = [
        "uuid",
        "lab",
        "category",
        "amount",
        "priority",
        "effective_at",
        "expires_at",
        "expired_at",
        "voided_at",
        "source",
        "source_ref",
        "reason",
        "metadata",
        "created_by",
        "created_at",
    ]

    @admin.display(description="Status")
    def status(self, grant: Grant) -> str:
        return grant.status()

    def get_form(self, request: HttpRequest, obj: Grant | None = None, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = OperatorGrantForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Grant | None = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Grant | None = None) -> Any:
        return self.readonly_fields if obj is not None else OperatorGrantForm.Meta.fields

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Grant, form: Any, change: bool) -> None:
        if change:
            return  # a grant never changes; void it and add another
        data = form.cleaned_data
        grant = services.lab_top_up(
            lab=data["lab"],
            amount=data["amount"],
            category=data["category"],
            priority=data["priority"],
            effective_at=data["effective_at"],
            expires_at=data["expires_at"],
            source=GrantSource.OPERATOR,
            reason=data["reason"],
            actor=request.user,  # type: ignore[arg-type]
        )
        obj.pk = grant.pk
        obj.refresh_from_db()

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        pass  # nothing related to save: the service wrote everything

    @admin.action(
        description="Void selected grants (returns what is left to the system)",
        permissions=["change"],
    )
    def void(self, request: HttpRequest, queryset: QuerySet[Grant]) -> HttpResponse | None:
        form = VoidForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            total = sum(
                services.grant_void(
                    grant=grant, actor=request.user, reason=form.cleaned_data["reason"]
                )
                for grant in queryset
            )
            self.message_user(
                request,
                f"Voided {queryset.count()} grant(s); {total} credits returned.",
                messages.SUCCESS,
            )
            return None
        return TemplateResponse(
            request,
            "admin/billing/grant/void.html",
            {
                **self.admin_site.each_context(request),
                "grants": queryset,
                "form": form,
                "opts": self.model._meta,
                "title": "Void grants",
            },
        )


class JournalLineInline(admin.TabularInline):
    model = JournalLine
    fields = ["account", "grant", "amount"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(JournalEntry)
class JournalEntryAdmin(ReadOnlyAdmin):
    list_display = ["id", "type", "created_at", "moved", "actor_user", "actor_token", "reason"]
    list_filter = ["type", "created_at"]
    search_fields = ["uuid", "reason", "actor_user__email", "idempotency_key", "job_uuid"]
    inlines = [JournalLineInline]
    list_select_related = ["actor_user", "actor_token"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[JournalEntry]:
        credited = Sum("lines__amount", filter=Q(lines__amount__gt=0))
        return super().get_queryset(request).annotate(moved=credited)

    @admin.display(description="Credits moved", ordering="moved")
    def moved(self, entry: JournalEntry) -> Decimal | None:
        """What the entry's lines credited (as much as they debited)."""
        return entry.moved  # type: ignore[attr-defined]


@admin.register(LedgerAccount)
class LedgerAccountAdmin(ReadOnlyAdmin):
    list_display = ["name", "type", "lab", "project", "balance"]
    list_filter = ["type"]
    search_fields = ["name", "lab__name", "lab__uuid", "project__uuid"]
    list_select_related = ["lab", "project"]


# Stripe top-ups ------------------------------------------------------------------------------


class RefundForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}))


@admin.register(TopUp)
class TopUpAdmin(admin.ModelAdmin):
    """Read-only rows; the one operator action on them is the refund (needs change rights)."""

    list_display = [
        "uuid",
        "lab",
        "kind",
        "status",
        "amount_display",
        "credits",
        "refunded_display",
        "created_at",
        "paid_at",
    ]
    list_filter = ["status", "kind", ("lab", admin.RelatedOnlyFieldListFilter), "created_at"]
    date_hierarchy = "created_at"
    search_fields = [
        "uuid",
        "lab__name",
        "lab__uuid",
        "stripe_session_id",
        "stripe_payment_intent_id",
        "stripe_charge_id",
        "created_by__email",
    ]
    list_select_related = ["lab"]
    actions = ["refund"]

    @admin.display(description="Paid")
    def amount_display(self, topup: TopUp) -> str:
        return amount_format(topup.amount_minor, currency=topup.currency)

    @admin.display(description="Refunded")
    def refunded_display(self, topup: TopUp) -> str:
        if not topup.refunded_minor:
            return "—"
        return amount_format(topup.refunded_minor, currency=topup.currency)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [field.name for field in TopUp._meta.fields]

    def save_model(self, request: HttpRequest, obj: TopUp, form: Any, change: bool) -> None:
        pass  # only Stripe's events change a top-up

    @admin.action(
        description="Refund selected top-ups at Stripe (credits go back when Stripe confirms)",
        permissions=["change"],
    )
    def refund(self, request: HttpRequest, queryset: QuerySet[TopUp]) -> HttpResponse | None:
        form = RefundForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return TemplateResponse(
                request,
                "admin/billing/topup/refund.html",
                {
                    **self.admin_site.each_context(request),
                    "topups": queryset,
                    "form": form,
                    "opts": self.model._meta,
                    "title": "Refund top-ups",
                },
            )
        done = 0
        for topup in queryset:
            try:
                asked = topups.topup_refund_request(topup=topup)
            except (TopUpError, PaymentProviderError) as exc:
                self.message_user(request, f"{topup.uuid}: {exc.message}", messages.ERROR)
                continue
            paid = amount_format(asked, currency=topup.currency)
            self.log_change(
                request, topup, f"Refund of {paid} asked at Stripe: {form.cleaned_data['reason']}"
            )
            done += 1
        if done:
            self.message_user(
                request,
                f"Asked Stripe to refund {done} top-up(s); their credits go back when Stripe "
                "confirms the refund.",
                messages.SUCCESS,
            )
        return None


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "topup", "received_at"]
    list_filter = ["type", "received_at"]
    search_fields = ["event_id", "topup__uuid"]


@admin.register(AutoRecharge)
class AutoRechargeAdmin(ReadOnlyAdmin):
    list_display = ["lab", "enabled", "threshold", "amount_minor", "consecutive_failures"]
    list_filter = ["enabled"]
    search_fields = ["lab__name", "lab__uuid"]


@admin.register(BalanceAlert)
class BalanceAlertAdmin(ReadOnlyAdmin):
    list_display = ["lab", "project", "threshold", "notified_at", "created_by", "created_at"]
    list_filter = ["notified_at"]
    search_fields = ["lab__name", "lab__uuid", "project__name"]


@admin.register(LabDebt)
class LabDebtAdmin(ReadOnlyAdmin):
    list_display = ["lab", "amount", "repaid", "forgiven", "reason", "topup", "created_at"]
    search_fields = ["lab__name", "lab__uuid", "topup__uuid"]


@admin.register(StripeCustomer)
class StripeCustomerAdmin(ReadOnlyAdmin):
    list_display = ["lab", "customer_id", "payment_method_label"]
    search_fields = ["lab__name", "customer_id"]


from billing import plan_admin  # noqa: E402, F401  (registers the plan admins)
