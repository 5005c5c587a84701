"""The portal's forms for a new API key and for a key's settings. They check the shape of
the input (numbers, choices, the user's own projects); keys.services.key_settings_validate checks
the rest (limits no looser than the services' defaults, the cap's amount, the expiry), and its
errors land on these fields: each field is named like the error's place in
KeySettingsError.details (`limits.<scope>.<name>`)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django import forms

from accounts import selectors as account_selectors
from accounts.models import Project, User
from billing import selectors as billing_selectors
from core.money import credits_display, decimal_plain, ungrouped
from keys.errors import KeySettingsError
from keys.models import ALL_SERVICES, ApiKey, CreditPeriod
from keys.selectors import key_limits
from keys.services import (
    LIMIT_FIELDS,
    LIMIT_MAX,
    KeySettings,
    key_named_services,
    key_settings_validate,
)
from metering.models import Service
from metering.units import units_plural

ALL, SOME = "all", "some"


def limit_field_name(scope: str, name: str) -> str:
    """`limits.*.requests_per_minute`, `limits.ml-llm.units_per_minute`: the key of the error
    in KeySettingsError.details, so errors map onto fields one to one."""
    return f"limits.{scope}.{name}"


class ProjectChoiceField(forms.ModelChoiceField):
    """Lab / project, with what the project can spend: a key spends its project's budget,
    not the lab's balance."""

    spendable: dict[int, Decimal]

    def label_from_instance(self, obj: Project) -> str:
        credits = self.spendable.get(obj.pk, Decimal(0))
        return f"{obj.lab.name} / {obj.name} ({credits_display(max(credits, Decimal(0)))} credits)"


@dataclass
class ServiceRow:
    """One line of the services table: the checkbox and the two limits of a service."""

    service: Service
    checked: bool
    requests: forms.BoundField
    units: forms.BoundField

    @property
    def requests_hint(self) -> str:
        return _default_hint(self.service.key_requests_per_minute)

    @property
    def units_hint(self) -> str:
        return _default_hint(self.service.key_units_per_minute)

    @property
    def units_name(self) -> str:
        """What the service's units are called: tokens, calls."""
        return units_plural(self.service.unit_label)


def _default_hint(default: int | None) -> str:
    return "no default limit" if default is None else f"default and max {default:,}"


class KeyCreateForm(forms.Form):
    name = forms.CharField(label="Name", max_length=100, strip=True)
    project = ProjectChoiceField(
        label="Project", queryset=Project.objects.none(), to_field_name="uuid", empty_label=None
    )
    service_access = forms.ChoiceField(
        label="Services",
        choices=[(ALL, "All services"), (SOME, "Only the services checked below")],
        initial=ALL,
        widget=forms.RadioSelect,
    )
    services = forms.MultipleChoiceField(
        label="Allowed services", required=False, widget=forms.CheckboxSelectMultiple
    )
    credit_limit = forms.CharField(
        label="Credit cap",
        required=False,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "none"}),
        help_text="Total credits the key may spend; empty: no cap of its own.",
    )
    credit_limit_period = forms.ChoiceField(
        label="Cap resets",
        required=False,
        choices=[("", "Never (a total)"), *CreditPeriod.choices],
    )
    expires_at = forms.DateTimeField(
        label="Expires (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty: never.",
    )

    key_settings: KeySettings  # set by clean() when the settings pass
    kept: frozenset[str] = frozenset()  # services no longer offered that an edited key names

    def __init__(self, *args: Any, user: User, authorizable: dict[str, Service], **kwargs: Any):
        super().__init__(*args, **kwargs)
        projects = account_selectors.project_list(actor=user).order_by("lab__name", "name", "id")
        field = self.fields["project"]
        field.queryset = projects
        field.spendable = {
            row.project.pk: row.spendable for row in billing_selectors.project_balances(projects)
        }
        own = projects.filter(lab__personal_for=user).first()  # not another lab's, first
        if own is not None and not self.is_bound:
            self.initial.setdefault("project", own.uuid)
        self.authorizable = authorizable
        self.fields["services"].choices = [(slug, slug) for slug in authorizable]
        for scope, service in [(ALL_SERVICES, None), *authorizable.items()]:
            for name in LIMIT_FIELDS:
                default = getattr(service, f"key_{name}") if service else None
                attrs: dict[str, Any] = {"min": 1, "inputmode": "numeric"}
                if default is not None:
                    attrs["max"] = default  # the browser's hint; the service decides
                    attrs["placeholder"] = f"max {default}"
                self.fields[limit_field_name(scope, name)] = forms.IntegerField(
                    label=name.replace("_", " ").capitalize(),
                    required=False,
                    min_value=1,
                    max_value=LIMIT_MAX[name],
                    error_messages={"max_value": f"At most {LIMIT_MAX[name]:,}."},
                    widget=forms.NumberInput(attrs=attrs),
                )

    def service_rows(self) -> list[ServiceRow]:
        if self.is_bound:
            checked = set(self.data.getlist("services"))
        else:
            checked = set(self.initial.get("services", []))
        return [
            ServiceRow(
                service=service,
                checked=slug in checked,
                requests=self[limit_field_name(slug, "requests_per_minute")],
                units=self[limit_field_name(slug, "units_per_minute")],
            )
            for slug, service in self.authorizable.items()
        ]

    def key_wide(self) -> tuple[forms.BoundField, forms.BoundField]:
        return (
            self[limit_field_name(ALL_SERVICES, "requests_per_minute")],
            self[limit_field_name(ALL_SERVICES, "units_per_minute")],
        )

    def clean(self) -> dict[str, Any]:
        """The shape checks above, then the service's checks on what is well-formed, so that
        every problem shows at once; `key_settings` holds the result when all is well."""
        data = super().clean()
        if data.get("service_access") == SOME and "services" in data and not data["services"]:
            self.add_error("services", "Check at least one service, or allow all services.")
        try:
            self.key_settings = key_settings_validate(**self._settings_input(), kept=self.kept)
        except KeySettingsError as exc:
            self.add_settings_errors(exc)
        return data

    def _settings_input(self) -> dict[str, Any]:
        """The cleaned input as key_settings_validate takes it; a field with an error of its
        own is left out (taken as empty)."""
        data = self.cleaned_data
        limits: dict[str, dict[str, int | None]] = {}
        for scope in [ALL_SERVICES, *self.authorizable]:
            values = {name: data.get(limit_field_name(scope, name)) for name in LIMIT_FIELDS}
            if any(value is not None for value in values.values()):
                limits[scope] = values
        some = data.get("service_access") == SOME and data.get("services")
        return {
            "services": sorted(data["services"]) if some else None,
            "limits": limits,
            "credit_limit": ungrouped(data.get("credit_limit") or "") or None,
            "credit_limit_period": data.get("credit_limit_period", ""),
            "expires_at": data.get("expires_at"),
        }

    def add_settings_errors(self, error: KeySettingsError) -> None:
        """Each message of the service's details on its field; a limit's message without a
        field (`limits.<slug>`) on the service's requests field; the rest above the form."""
        details = error.details or {}
        if not details:
            self.add_error(None, error.message)
        for where, messages in details.items():
            field = where if where in self.fields else None
            if field is None and where.startswith("limits."):
                candidate = limit_field_name(where.removeprefix("limits."), "requests_per_minute")
                field = candidate if candidate in self.fields else None
            for message in messages:
                if field is None:
                    self.add_error(None, f"{where}: {message}")
                elif field not in self.errors or message not in self.errors[field]:
                    self.add_error(field, message)

    def error_sentences(self) -> list[str]:
        """Every error as a sentence, field errors named by their label (the alert on top)."""
        errors = list(self.non_field_errors())
        for name, field_errors in self.errors.items():
            if name == "__all__":
                continue
            errors += [f"{self._describe(name)}: {message}" for message in field_errors]
        return errors

    def _describe(self, name: str) -> str:
        if name.startswith("limits."):
            scope, _, limit = name.removeprefix("limits.").partition(".")
            what = "Key-wide" if scope == ALL_SERVICES else scope
            return f"{what} {limit.replace('_', ' ')}"
        return str(self.fields[name].label)


class KeyEditForm(KeyCreateForm):
    """The settings of an existing key: everything but its project (and its secret). Services
    it names that are no longer offered have no field here; they stay as they are."""

    def __init__(self, *args: Any, key: ApiKey, **kwargs: Any):
        super().__init__(*args, **kwargs)
        del self.fields["project"]
        self.key = key
        self.kept = frozenset(key_named_services(key) - set(self.authorizable))
        if self.is_bound:
            return
        self.initial.update(
            name=key.name,
            service_access=ALL if key.services is None else SOME,
            services=key.services or [],
            credit_limit=decimal_plain(key.credit_limit) if key.credit_limit is not None else "",
            credit_limit_period=key.credit_limit_period,
            expires_at=key.expires_at,
        )
        for limit in key.limits.all():
            for name in LIMIT_FIELDS:
                field = limit_field_name(limit.service_slug, name)
                if field in self.fields:
                    self.initial[field] = getattr(limit, name)

    def kept_services(self) -> list[str]:
        return sorted(self.kept)

    def _settings_input(self) -> dict[str, Any]:
        wanted = super()._settings_input()
        if wanted["services"] is not None:
            wanted["services"] = sorted(
                set(wanted["services"]) | (set(self.key.services or []) & self.kept)
            )
        kept_limits = {
            slug: values for slug, values in key_limits(self.key).items() if slug in self.kept
        }
        wanted["limits"] = {**wanted["limits"], **kept_limits}
        stored, given = self.key.expires_at, wanted["expires_at"]
        if stored is not None and given == stored.replace(second=0, microsecond=0):
            wanted["expires_at"] = stored  # the field shows minutes: unchanged, not moved earlier
        return wanted
