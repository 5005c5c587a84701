from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings

from accounts.models import Lab
from billing.currency import amount_parse
from billing.errors import TopUpError
from billing.topups import amount_check
from core.money import CREDIT_PLACES, MAX_CREDITS, AmountError, credits_parse, ungrouped


class CreditsFormField(forms.CharField):
    """An exact credit amount; refuses more than six decimal places instead of rounding."""

    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        if value in self.empty_values:
            return value
        try:
            return credits_parse(ungrouped(value))
        except AmountError as exc:
            raise forms.ValidationError(str(exc)) from exc


class BudgetForm(forms.Form):
    """Assign (lab → project), reverse (project → lab) or move (project → project)."""

    OPERATIONS = [("assign", "Assign"), ("reverse", "Reverse"), ("move", "Move")]

    operation = forms.ChoiceField(choices=OPERATIONS, widget=forms.HiddenInput)
    project = forms.TypedChoiceField(label="Project", coerce=str)
    to_project = forms.TypedChoiceField(label="To project", coerce=str, required=False)
    amount = CreditsFormField(
        label="Credits",
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "100.00"}),
        help_text=f"Up to {CREDIT_PLACES} decimal places, below {MAX_CREDITS:,.0f}.",
    )

    def __init__(self, *args: Any, lab: Lab, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(str(p.uuid), p.name) for p in lab.projects.order_by("name", "id")]
        self.fields["project"].choices = choices
        self.fields["to_project"].choices = [("", "—"), *choices]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("operation") == "move" and not data.get("to_project"):
            self.add_error("to_project", "Choose the project that receives the credits.")
        elif data.get("operation") == "move" and data.get("to_project") == data.get("project"):
            self.add_error("to_project", "Choose another project than the one the credits leave.")
        return data


def _currency_amount(value: Any) -> Decimal:
    """An amount of TOPUP_CURRENCY within the top-up range, or a form error."""
    currency = settings.TOPUP_CURRENCY
    try:
        amount = amount_parse(ungrouped(str(value)), currency=currency)
        amount_check(amount)
    except (AmountError, TopUpError) as exc:
        raise forms.ValidationError(getattr(exc, "message", str(exc))) from exc
    return amount


def _target_choices(lab: Lab) -> list[tuple[str, str]]:
    projects = [(str(p.uuid), f"Project {p.name}") for p in lab.projects.order_by("name", "id")]
    return [("", f"The lab's balance ({lab.name})"), *projects]


class TopUpForm(forms.Form):
    """A preset or a custom amount (custom wins), and where the credits go."""

    preset = forms.ChoiceField(required=False, widget=forms.RadioSelect)
    amount = forms.CharField(
        label="Or another amount (used instead of the choice above)",
        required=False,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "25.00"}),
    )
    target = forms.ChoiceField(
        label="Credit to",
        required=False,
        error_messages={"invalid_choice": "Choose this lab or one of its projects."},
    )
    save_payment_method = forms.BooleanField(
        label="Save the payment method for auto-recharge", required=False
    )

    def __init__(
        self, *args: Any, lab: Lab, can_save_payment_method: bool = False, **kwargs: Any
    ) -> None:
        """`can_save_payment_method`: the payer is an owner or admin of the lab. Auto-recharge
        charges the saved card, and only they set auto-recharge, so only they may replace it;
        for anyone else the field is left out (and a posted value ignored)."""
        kwargs.setdefault("auto_id", "topup_%s")  # the billing page has three forms
        super().__init__(*args, **kwargs)
        self.fields["preset"].choices = [(str(a), str(a)) for a in settings.TOPUP_PRESET_AMOUNTS]
        self.fields["target"].choices = _target_choices(lab)
        if not can_save_payment_method:
            del self.fields["save_payment_method"]
        self.lab = lab

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        data.setdefault("save_payment_method", False)
        raw = (data.get("amount") or "").strip() or data.get("preset")
        if not raw:
            if "preset" not in self.errors:
                self.add_error("amount", "Choose an amount or enter one.")
            return data
        try:
            data["amount"] = _currency_amount(raw)
        except forms.ValidationError as exc:
            self.add_error("amount", exc)
        data["project"] = self.lab.projects.get(uuid=data["target"]) if data.get("target") else None
        return data


class AutoRechargeForm(forms.Form):
    enabled = forms.BooleanField(label="Auto-recharge on", required=False)
    threshold = CreditsFormField(
        label="When the balance falls below (credits)",
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "10"}),
    )
    amount = forms.CharField(
        label="Pay",
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "25.00"}),
    )
    monthly_cap = forms.CharField(
        label="At most a month",
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "100.00"}),
    )
    target = forms.ChoiceField(
        label="Balance to watch and refill",
        required=False,
        error_messages={"invalid_choice": "Choose this lab or one of its projects."},
    )

    def __init__(self, *args: Any, lab: Lab, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "recharge_%s")  # ids unique on the billing page
        super().__init__(*args, **kwargs)
        self.fields["target"].choices = _target_choices(lab)
        self.lab = lab

    def clean_amount(self) -> Decimal:
        return _currency_amount(self.cleaned_data["amount"])

    def clean_monthly_cap(self) -> Decimal:
        try:
            cap = ungrouped(self.cleaned_data["monthly_cap"])
            return amount_parse(cap, currency=settings.TOPUP_CURRENCY)
        except AmountError as exc:
            raise forms.ValidationError(str(exc)) from exc

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        amount, cap = data.get("amount"), data.get("monthly_cap")
        if amount is not None and cap is not None and cap < amount:
            self.add_error("monthly_cap", "The monthly cap must be at least the amount.")
        data["project"] = self.lab.projects.get(uuid=data["target"]) if data.get("target") else None
        return data


class BalanceAlertForm(forms.Form):
    target = forms.ChoiceField(
        label="Balance to watch",
        required=False,
        error_messages={"invalid_choice": "Choose this lab or one of its projects."},
        help_text="The lab's balance is what is not yet assigned to a project; API keys and jobs"
        " spend project budgets.",
    )
    threshold = CreditsFormField(
        label="Mail when it falls below (credits)",
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "50"}),
    )

    def __init__(self, *args: Any, lab: Lab, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "alert_%s")  # ids unique on the billing page
        super().__init__(*args, **kwargs)
        self.fields["target"].choices = _target_choices(lab)
        self.lab = lab

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        data["project"] = self.lab.projects.get(uuid=data["target"]) if data.get("target") else None
        return data
