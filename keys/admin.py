"""Operators' view of end-user API keys and the jobs they authorized.

Keys are created by their users (the portal or the management API), where the full key is shown
once; the admin never adds one and never shows a secret or its hash. An operator may rename a
key, change its expiry, or revoke keys (the action, through keys.services.key_revoke)."""

from __future__ import annotations

import re
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils import timezone

from billing.models import Plan, PlanSubscription
from billing.plan_admin import PlanAdmin, PlanSubscriptionAdmin
from core.money import credits_display
from keys import quotas, selectors
from keys.models import ALL_SERVICES, ApiKey, KeyJob, KeyLimit, PlanQuota, QuotaReset
from keys.services import key_revoke, quota_reset

PASTED_KEY = re.compile(r"sk_([a-z0-9]{1,32})(?:_.*)?")


class KeyLimitInline(admin.TabularInline):
    """Read-only: limits are checked against the services' defaults where they are set."""

    model = KeyLimit
    extra = 0
    fields = ["service_slug", "requests_per_minute", "units_per_minute"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name", "masked", "project", "lab", "created_by", "last_used_at", "expires_at",
        "revoked_at", "credit_limit", "credit_limit_period", "cap_used",
    ]  # fmt: skip
    list_filter = [
        ("revoked_at", admin.EmptyFieldListFilter),
        ("expires_at", admin.EmptyFieldListFilter),
        ("expired_at", admin.EmptyFieldListFilter),
        ("credit_limit", admin.EmptyFieldListFilter),
        "credit_limit_period",
        "created_at",
    ]
    search_fields = ["name", "lookup_id", "uuid", "project__name", "project__lab__name"]
    list_select_related = ["project__lab", "created_by"]
    # Everything on the page; never secret_hash or previous_secret_hash.
    fields = [
        "name", "masked", "uuid", "project", "lab", "created_by", "created_by_token",
        "services", "credit_limit", "credit_limit_period", "cap_used", "credit_period_start",
        "created_at", "last_used_at", "rotated_at", "previous_valid_until", "expires_at",
        "expired_at", "revoked_at", "revoked_by",
    ]  # fmt: skip
    readonly_fields = [name for name in fields if name not in ("name", "expires_at")]
    inlines = [KeyLimitInline]
    actions = ["revoke"]

    @admin.display(description="Key")
    def masked(self, obj: ApiKey) -> str:
        return obj.masked

    @admin.display(description="Credit used (cap period)")
    def cap_used(self, obj: ApiKey) -> str:
        # Counted only against a cap: a key without one spends from its project unmetered here.
        if obj.credit_limit is None:
            return "— no cap"
        return credits_display(obj.credit_used)

    @admin.display(description="Lab", ordering="project__lab__name")
    def lab(self, obj: ApiKey) -> str:
        return str(obj.project.lab)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        # Only what the page edits: a full-row save would write back a revocation, a cap count
        # or a rotation made meanwhile.
        fields = ["name", "expires_at", "updated_at"]
        if obj.expired_at is not None and (
            obj.expires_at is None or obj.expires_at > timezone.now()
        ):
            obj.expired_at = None  # extended: active again, and marked again when it passes
            fields.append("expired_at")
        obj.save(update_fields=fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the full key must be shown once, to whoever creates it: the portal or API

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # its jobs refer to it; revoke it instead

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ApiKey], search_term: str
    ) -> tuple[QuerySet[ApiKey], bool]:
        """A pasted key, full or masked (`sk_<lookup>_…`), finds its key by the lookup id."""
        match = PASTED_KEY.fullmatch(search_term.strip())
        if match:
            return queryset.filter(lookup_id=match.group(1)), False
        return super().get_search_results(request, queryset, search_term)

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        active = list(queryset.filter(revoked_at__isnull=True))
        for key in active:
            key_revoke(key=key, by=request.user)  # type: ignore[arg-type]
        self.message_user(request, f"Revoked {len(active)} key(s).")


@admin.register(KeyJob)
class KeyJobAdmin(admin.ModelAdmin):
    """Read-only: written by authorize and usage only."""

    list_display = [
        "job_uuid", "key", "service_slug", "estimated_units", "units", "cap_held", "charged",
        "created_at", "settled_at", "released_at",
    ]  # fmt: skip
    list_filter = [
        ("settled_at", admin.EmptyFieldListFilter),
        ("released_at", admin.EmptyFieldListFilter),
        "service_slug",
        "created_at",
    ]
    search_fields = ["key__name", "key__lookup_id", "key__uuid", "job__uuid"]
    list_select_related = ["key", "job"]
    date_hierarchy = "created_at"

    @admin.display(description="Job", ordering="job__uuid")
    def job_uuid(self, obj: KeyJob) -> str:
        return str(obj.job.uuid)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PlanQuotaFormSet(BaseInlineFormSet):
    def clean(self) -> None:
        """One quota per service, and one for every service: the rows' NULL service escapes
        Django's own uniqueness check, so count them here."""
        super().clean()
        kept = [
            form
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE", False)
        ]
        services = [form.cleaned_data.get("service") for form in kept]
        if services.count(None) > 1:
            raise ValidationError("Only one quota can be for every service.")


class PlanQuotaInline(admin.TabularInline):
    model = PlanQuota
    formset = PlanQuotaFormSet
    extra = 1
    fields = ["service", "requests"]
    verbose_name = "request quota"
    verbose_name_plural = "Request quotas (authorized requests per plan period, counted per lab)"


# Plans are billing's; their request quotas are counted by authorize, so they are edited here.
admin.site.unregister(Plan)


@admin.register(Plan)
class PlanWithQuotasAdmin(PlanAdmin):
    inlines = [PlanQuotaInline]


class QuotaResetInline(admin.TabularInline):
    """Who reset the lab's quotas, and when: read-only, as the resets it records."""

    model = QuotaReset
    fields = readonly_fields = ["created_at", "scope", "period", "by_user", "by_token"]
    extra = 0
    can_delete = False
    verbose_name_plural = "Request quota resets"

    @admin.display(description="Period")
    def period(self, obj: QuotaReset) -> int:
        return obj.period_index + 1

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


admin.site.unregister(PlanSubscription)


@admin.register(PlanSubscription)
class PlanSubscriptionWithQuotasAdmin(PlanSubscriptionAdmin):
    """Shows what a lab used of its plan's request quotas this period, and resets them."""

    actions = [*PlanSubscriptionAdmin.actions, "reset_quotas"]
    readonly_fields = [*PlanSubscriptionAdmin.readonly_fields, "request_quotas"]

    def get_inlines(self, request: HttpRequest, obj: PlanSubscription | None = None) -> Any:
        return [QuotaResetInline] if obj is not None else []

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        for formset in formsets:
            formset.save()  # read-only, so nothing; the admin's change message reads its result

    @admin.display(description="Request quotas this period")
    def request_quotas(self, obj: PlanSubscription) -> str:
        plan_quotas = _current_quotas(obj)
        if plan_quotas is None:
            return "—"
        try:
            counted = quotas.left(plan_quotas, timezone.now())
        except quotas.RateLimiterUnavailable:
            return "Cannot be read right now (Redis is unavailable)"
        return (
            "; ".join(
                f"{'every service' if q.scope == ALL_SERVICES else q.scope}: "
                f"{q.used:,} of {q.limit:,} used"
                for q in counted
            )
            or "—"
        )

    @admin.action(
        description="Reset the request quotas of this period (counts start from zero)",
        permissions=["change"],
    )
    def reset_quotas(self, request: HttpRequest, queryset: QuerySet[PlanSubscription]) -> None:
        now, reset = timezone.now(), 0
        for subscription in queryset:
            plan_quotas = _current_quotas(subscription)
            if plan_quotas is None:
                continue
            try:
                for scope, _ in plan_quotas.limits:
                    quota_reset(plan_quotas=plan_quotas, scope=scope, actor=request.user, at=now)
            except quotas.RateLimiterUnavailable:
                self.message_user(
                    request,
                    f"Redis is unavailable: reset the quotas of {reset} subscription(s) before "
                    f"it failed; {subscription.lab}'s may be partly reset. Try again.",
                    messages.ERROR,
                )
                return
            reset += 1
        self.message_user(
            request,
            f"Reset the request quotas of {reset} subscription(s); "
            "ended ones and plans without quotas have none.",
            messages.SUCCESS if reset else messages.WARNING,
        )


def _current_quotas(subscription: PlanSubscription) -> quotas.PlanQuotas | None:
    """The subscription's quotas, if it is its lab's current one and its plan has any."""
    plan_quotas = selectors.plan_quotas(lab_id=subscription.lab_id)
    if plan_quotas is None or plan_quotas.subscription != subscription.uuid:
        return None
    return plan_quotas if plan_quotas.limits else None
