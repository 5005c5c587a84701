"""Operators edit services, price versions with their tiers, and lab discounts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet, Sum
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html_join

from billing import selectors as billing_selectors
from billing.admin import ReadOnlyAdmin
from core.money import decimal_plain
from metering import selectors
from metering.cost import Tier, TierError, tiers_validate
from metering.errors import MissingPriceError
from metering.models import (
    Discount,
    Job,
    Price,
    PriceTier,
    RollupPeriod,
    Service,
    UsageRollup,
)


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ["slug", "type", "name", "unit_label", "current_price", "is_active", "is_legacy"]
    list_filter = ["type", "is_active", "is_legacy"]
    search_fields = ["slug", "name"]
    fieldsets = [
        (None, {"fields": ["slug", "type", "name", "unit_label", "display_scale", "display_unit"]}),
        ("State", {"fields": ["is_active", "is_legacy"]}),
        (
            "API key limits",
            {
                "fields": ["key_requests_per_minute", "key_units_per_minute"],
                "description": "Every API key gets these per-minute limits for this service; "
                "a key may set tighter ones, never looser.",
            },
        ),
    ]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A service with prices or jobs is history: switch it off (active, legacy) instead.
        if obj is not None and (obj.prices.exists() or obj.jobs.exists()):
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description="Current default price")
    def current_price(self, service: Service) -> str:
        try:
            price = selectors.price_current(service=service, lab=None, at=timezone.now())
        except MissingPriceError:
            return "— no price —"
        return format_html_join("; ", "{}", ((str(tier),) for tier in price.tiers.all()))


class TierFormSet(forms.BaseInlineFormSet):
    """The tiers of one price must start at 0 and be contiguous up to an open last tier."""

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        tiers = [
            Tier(
                form.cleaned_data["min_quantity"],
                form.cleaned_data.get("max_quantity"),
                form.cleaned_data.get("fixed_cost") or 0,
                form.cleaned_data["multiplier"],
            )
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        if self.instance.pk is not None:  # saved tiers the form did not send stay as they are
            sent = [form.instance.pk for form in self.forms if form.instance.pk is not None]
            tiers += [
                Tier(tier.min_quantity, tier.max_quantity, tier.fixed_cost, tier.multiplier)
                for tier in self.instance.tiers.exclude(pk__in=sent)
            ]
        try:
            tiers_validate(tiers)
        except TierError as exc:
            raise forms.ValidationError(str(exc)) from exc


class PriceTierInline(admin.TabularInline):
    model = PriceTier
    formset = TierFormSet
    extra = 1
    min_num = 1


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["service", "lab", "valid_from", "valid_to", "tier_summary"]
    list_filter = ["service__type", "service", ("lab", admin.EmptyFieldListFilter)]
    search_fields = ["service__slug", "lab__name", "lab__uuid"]
    autocomplete_fields = ["lab"]
    inlines = [PriceTierInline]
    list_select_related = ["service", "lab"]

    @admin.display(description="Tiers")
    def tier_summary(self, price: Price) -> str:
        return format_html_join("; ", "{}", ((str(tier),) for tier in price.tiers.all()))

    def _editable(self, price: Price | None) -> bool:
        # Append-only: a price in effect may be charged at any moment, one a job used must stay
        # as it was charged, and one valid in the past prices usage events posted late (up to
        # USAGE_MAX_PAST_SECONDS back); an operator adds a new version instead.
        return price is None or (price.valid_from > timezone.now() and not price.jobs.exists())

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._editable(obj) and super().has_delete_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._editable(obj) and super().has_change_permission(request, obj)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        price = self.get_object(request, object_id)
        if request.method == "GET" and price is not None and not self._editable(price):
            messages.warning(
                request,
                "This price's valid-from has passed, or a job used it, so it cannot change: "
                "usage may have been charged at it. Add a new price for the service with a later "
                "valid-from instead.",
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Price, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        now = timezone.now()
        start = max(obj.valid_from, now)
        winner = _price_at(obj, start)
        if winner is not None and winner.pk != obj.pk:
            when = "now" if start == now else f"from {obj.valid_from:%Y-%m-%d %H:%M} UTC"
            messages.warning(
                request,
                f"This price will not apply {when}: the one valid from "
                f"{winner.valid_from:%Y-%m-%d %H:%M} UTC takes precedence (among the prices "
                "valid at a moment, the latest valid-from wins); it prices only usage dated "
                "when it was the latest (usage events may be posted up to 35 days late). To "
                "change the price from now on, add a price with a later valid-from.",
            )
        elif obj.valid_from < now:
            messages.warning(
                request,
                f"This price is valid from {obj.valid_from:%Y-%m-%d %H:%M} UTC, in the past: it "
                "applies to estimates and reservations from now on, and to usage events dated "
                "since then, also those already posted and not yet charged; jobs reserved "
                "before keep the price they were reserved at.",
            )


def _price_at(price: Price, at: Any) -> Price | None:
    """The price of `price`'s service and lab (or the default) in effect at `at`."""
    try:
        return selectors.price_current(service=price.service, lab=price.lab, at=at)
    except MissingPriceError:
        return None


@admin.register(Discount)
class DiscountAdmin(admin.ModelAdmin):
    list_display = ["lab", "percent_off", "valid_from", "valid_to"]
    search_fields = ["lab__name", "lab__uuid"]
    autocomplete_fields = ["lab"]
    list_select_related = ["lab"]

    @admin.display(description="Discount", ordering="discount")
    def percent_off(self, discount: Discount) -> str:
        return f"{decimal_plain(discount.discount * 100)}%"


class JobStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("open", "Running (started, not closed)"), ("reserved", "Reserved, not started"),
                ("closed", "Closed"), ("cancelled", "Cancelled")]  # fmt: skip

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return {
            "open": queryset.filter(started_at__isnull=False, closed_at__isnull=True),
            "reserved": queryset.filter(started_at__isnull=True, cancelled_at__isnull=True),
            "closed": queryset.filter(closed_at__isnull=False),
            "cancelled": queryset.filter(cancelled_at__isnull=False),
        }.get(self.value() or "", queryset)


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    """Jobs as the chargers see them: for a running job, its last heartbeat, what it has been
    charged and what its reservation still holds."""

    list_display = [
        "uuid", "service", "project", "started_at", "last_alive_at", "last_charged_at",
        "charged_amount", "held", "closed_at",
    ]  # fmt: skip
    list_filter = [JobStateFilter, "kind", "service"]
    search_fields = ["uuid", "project__name", "project__uuid", "lab__name"]
    list_select_related = ["service", "project__lab"]
    date_hierarchy = "created_at"

    @admin.display(description="Reservation left")
    def held(self, job: Job) -> Decimal:
        return billing_selectors.job_held(job_uuid=job.uuid)


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
    """Revenue and usage for operators: the worker's hourly and daily rollups, filtered by
    period, date, service or lab, with the totals of what is filtered above the list."""

    list_display = [
        "period_start", "period", "lab", "project", "service", "amount", "units", "jobs_closed",
        "charges",
    ]  # fmt: skip
    list_filter = ["period", "service"]
    date_hierarchy = "period_start"
    search_fields = ["lab__name", "lab__uuid", "project__name", "project__uuid"]
    list_select_related = ["lab", "project", "service"]
    change_list_template = "admin/metering/usagerollup/change_list.html"

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> Any:
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:  # not a redirect (a bad filter)
            # Hours and days overlap: sum one of them (days, unless hours are asked for).
            hourly = request.GET.get("period__exact") == RollupPeriod.HOUR
            rows = changelist.queryset.filter(
                period=RollupPeriod.HOUR if hourly else RollupPeriod.DAY
            )
            response.context_data["totals"] = rows.aggregate(
                credits=Sum("amount"), units=Sum("units"), jobs=Sum("jobs_closed"),
                labs=Count("lab", distinct=True),
            )  # fmt: skip
        return response
