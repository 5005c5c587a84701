from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from accounts import services
from accounts.models import (
    OPERATOR_ONLY_SCOPES,
    Lab,
    LabInvitation,
    Membership,
    Project,
    Scope,
    ServiceToken,
    User,
)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["email"]
    list_display = ["email", "name", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_superuser", "is_active"]
    search_fields = ["email", "name", "uuid"]
    readonly_fields = ["uuid", "date_joined", "last_login"]
    fieldsets = [
        (None, {"fields": ["email", "password", "uuid"]}),
        ("Profile", {"fields": ["name"]}),
        (
            "Permissions",
            {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]},
        ),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            services.personal_lab_create(user=obj)


class MembershipFormSet(forms.BaseInlineFormSet):
    """A saved membership's user cannot be swapped for another: that would remove the first
    user without revoking their keys (delete it, and add the other, instead)."""

    def add_fields(self, form: forms.Form, index: int | None) -> None:
        super().add_fields(form, index)
        if form.instance.pk is not None and "user" in form.fields:
            form.fields["user"].disabled = True


class MembershipInline(admin.TabularInline):
    model = Membership
    formset = MembershipFormSet
    extra = 0
    autocomplete_fields = ["user"]


class ProjectInline(admin.TabularInline):
    model = Project
    extra = 0
    fields = ["name", "uuid", "created_at"]
    readonly_fields = ["uuid", "created_at"]
    show_change_link = True


@admin.register(Lab)
class LabAdmin(admin.ModelAdmin):
    list_display = ["name", "uuid", "personal_for", "created_at"]
    list_filter = [("personal_for", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["name", "uuid", "memberships__user__email"]
    readonly_fields = ["uuid", "created_at", "updated_at"]
    autocomplete_fields = ["personal_for"]
    inlines = [MembershipInline, ProjectInline]

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        if formset.model is Membership:
            for membership in formset.deleted_objects:
                _membership_removed(membership)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "lab", "uuid", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["name", "uuid", "lab__name", "lab__uuid"]
    readonly_fields = ["uuid", "created_at", "updated_at"]
    autocomplete_fields = ["lab"]
    list_select_related = ["lab"]

    def get_readonly_fields(self, request: HttpRequest, obj: Project | None = None) -> Any:
        # A project's ledger accounts and the credits in them belong to its lab: never move it.
        return [*self.readonly_fields, "lab"] if obj is not None else self.readonly_fields


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "lab", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "lab__name", "lab__uuid"]
    autocomplete_fields = ["user", "lab"]
    list_select_related = ["user", "lab"]

    def get_readonly_fields(self, request: HttpRequest, obj: Membership | None = None) -> Any:
        # Moving a membership to another user or lab would remove someone without revoking
        # their keys: delete it and add another instead.
        return ["user", "lab"] if obj is not None else []

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        with transaction.atomic():
            super().delete_model(request, obj)
            _membership_removed(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        with transaction.atomic():
            for membership in queryset.select_related("lab", "user"):
                self.delete_model(request, membership)


def _membership_removed(membership: Membership) -> None:
    """A member removed by an operator loses the keys they made there, as in the portal."""
    services.membership_removed_announce(lab=membership.lab, user=membership.user, by=None)


class ServiceTokenForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ServiceToken
        fields = ["name", "scopes", "lab"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        operator_only = OPERATOR_ONLY_SCOPES & set(data.get("scopes") or [])
        if data.get("lab") is not None and operator_only:
            self.add_error(
                "scopes",
                f"{', '.join(sorted(operator_only))}: for operator tokens only (leave the lab "
                "empty).",
            )
        return data


@admin.register(ServiceToken)
class ServiceTokenAdmin(admin.ModelAdmin):
    form = ServiceTokenForm
    list_display = ["name", "token_prefix", "scope_list", "lab", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), ("lab", admin.EmptyFieldListFilter)]
    search_fields = ["name", "lookup_id", "lab__name"]
    readonly_fields = [
        "uuid", "lookup_id", "created_by", "last_used_at", "revoked_at", "created_at",
    ]  # fmt: skip
    autocomplete_fields = ["lab"]
    actions = ["revoke"]

    @admin.display(description="Token")
    def token_prefix(self, obj: ServiceToken) -> str:
        return f"{ServiceToken.PREFIX}{obj.lookup_id}_…"

    @admin.display(description="Scopes")
    def scope_list(self, obj: ServiceToken) -> str:
        return ", ".join(obj.scopes)

    def get_readonly_fields(self, request: HttpRequest, obj: ServiceToken | None = None) -> Any:
        # A token's powers are fixed once issued: revoke it and issue another instead.
        fixed = ["scopes", "lab"] if obj is not None else []
        return [*self.readonly_fields, *fixed]

    def save_model(self, request: HttpRequest, obj: ServiceToken, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token, plain = services.service_token_create(
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            lab=form.cleaned_data["lab"],
            created_by=request.user,  # type: ignore[arg-type]
        )
        obj.pk = token.pk
        obj.refresh_from_db()
        self.message_user(
            request,
            format_html(
                "Service token created. Copy it now, it will not be shown again: <code>{}</code>",
                plain,
            ),
            messages.WARNING,
        )

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ServiceToken]) -> None:
        for token in queryset:
            services.service_token_revoke(token=token)
        self.message_user(request, f"Revoked {queryset.count()} token(s).")


@admin.register(LabInvitation)
class LabInvitationAdmin(admin.ModelAdmin):
    """Who was invited where, by whom, and what became of it. Invitations are made and answered
    in the portal; here they are only read."""

    list_display = ["email", "lab", "role", "invited_by", "created_at", "accepted_at", "closed_at"]
    list_filter = ["role"]
    search_fields = ["email", "lab__name", "lab__uuid"]
    list_select_related = ["lab", "invited_by"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
