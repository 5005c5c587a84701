from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.db import transaction
from django.http import HttpRequest

from accounts.models import User
from accounts.services import personal_lab_create


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request: HttpRequest, user: User, form: Any, commit: bool = True) -> User:
        """Signup: the user and their personal lab are created together or not at all."""
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=commit)
            if commit:
                personal_lab_create(user=user)
        return user
