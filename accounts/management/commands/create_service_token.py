from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.errors import InvalidScopeError
from accounts.models import Lab
from accounts.services import service_token_create


class Command(BaseCommand):
    help = "Create a service token and print it once. It is stored only as a hash."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument(
            "--scopes", required=True, help="comma-separated, e.g. accounting,usage,authorize"
        )
        parser.add_argument("--lab", help="bind the token to one lab (its UUID); default: global")

    def handle(self, *args: Any, **options: Any) -> None:
        lab = None
        if options["lab"]:
            try:
                lab = Lab.objects.get(uuid=options["lab"])
            except (Lab.DoesNotExist, ValidationError) as exc:
                raise CommandError(f"No lab with id {options['lab']}") from exc
        try:
            token, plain = service_token_create(
                name=options["name"], scopes=options["scopes"].split(","), lab=lab
            )
        except InvalidScopeError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(
            f"Created service token '{token.name}' with scopes {', '.join(token.scopes)}"
            f"{f' for lab {lab.uuid}' if lab else ' (global)'}. It is shown only this once:"
        )
        self.stdout.write(plain)
