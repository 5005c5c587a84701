from __future__ import annotations

from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts.models import User
from accounts.services import user_create

DEMO_USERS = [
    # (email, password, name, is_superuser)
    ("operator@example.com", "operator-demo-pass", "Operator", True),
    ("demo@example.com", "demo-user-pass", "Demo User", False),
]


class Command(BaseCommand):
    help = "Create the demo operator and demo user (idempotent). Development only."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="run even with DEBUG off")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG and not options["force"]:
            raise CommandError("Demo data is for development; pass --force to load it anyway.")
        with transaction.atomic():
            for email, password, name, is_superuser in DEMO_USERS:
                user = User.objects.filter(email=email).first()
                if user is None:
                    user = user_create(
                        email=email, password=password, name=name, is_superuser=is_superuser
                    )
                EmailAddress.objects.update_or_create(
                    user=user, email=email, defaults={"verified": True, "primary": True}
                )
        for email, password, _name, is_superuser in DEMO_USERS:
            role = "operator (admin at /admin/)" if is_superuser else "user"
            self.stdout.write(f"  demo {role}: {email} / {password}")
