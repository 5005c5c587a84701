"""Forms of the lab pages: a new lab, a new project, a member added or changed."""

from __future__ import annotations

from typing import Any

from django import forms

from accounts.models import Lab, Role


class NameForm(forms.Form):
    name = forms.CharField(label="Name", max_length=200, strip=True)

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if not name.isprintable():  # line breaks, NUL, direction overrides
            raise forms.ValidationError("Use letters, digits, spaces and punctuation only.")
        return name


class ProjectForm(NameForm):
    def __init__(self, *args: Any, lab: Lab, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lab = lab

    def clean_name(self) -> str:
        name = super().clean_name()
        if self.lab.projects.filter(name__iexact=name).exists():
            raise forms.ValidationError(f"{self.lab.name} already has a project named {name}.")
        return name


class InviteForm(forms.Form):
    email = forms.EmailField(label="Email", max_length=254)
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.MEMBER)


class MemberChangeForm(forms.Form):
    action = forms.ChoiceField(choices=[("role", "role"), ("remove", "remove")])
    role = forms.ChoiceField(choices=Role.choices, required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("action") == "role" and not data.get("role"):
            self.add_error("role", "Choose a role.")
        return data
