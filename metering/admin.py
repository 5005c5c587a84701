"""Operators edit services, price versions with their tiers, and lab discounts."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html_join

from metering import selectors
from metering.cost import Tier, TierError, tiers_validate
from metering.errors import MissingPriceError
from metering.models import Discount, Price, PriceTier, Service


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ["slug", "type", "name", "unit_label", "current_price", "is_active", "is_legacy"]
    list_filter = ["type", "is_active", "is_legacy"]
    search_fields = ["slug", "name"]

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

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Append-only: a price that may have been charged is never rewritten or removed;
        # an operator adds a new version (with a later valid_from) instead.
        return obj is None or obj.valid_from > timezone.now()

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None or obj.valid_from > timezone.now()


@admin.register(Discount)
class DiscountAdmin(admin.ModelAdmin):
    list_display = ["lab", "discount", "valid_from", "valid_to"]
    search_fields = ["lab__name", "lab__uuid"]
    autocomplete_fields = ["lab"]
    list_select_related = ["lab"]
