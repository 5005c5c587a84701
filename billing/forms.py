from __future__ import annotations

from typing import Any

from django import forms

from accounts.models import Lab
from core.money import CREDIT_PLACES, MAX_CREDITS, AmountError, credits_parse


class CreditsFormField(forms.CharField):
    """An exact credit amount; refuses more than six decimal places instead of rounding."""

    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        if value in self.empty_values:
            return value
        try:
            return credits_parse(value)
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
        return data
