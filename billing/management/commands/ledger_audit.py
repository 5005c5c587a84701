from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from billing.audit import ledger_audit


class Command(BaseCommand):
    help = "Check every ledger invariant; print what is broken and exit non-zero if anything is."

    def handle(self, *args: Any, **options: Any) -> None:
        problems = ledger_audit()
        if problems:
            for problem in problems:
                self.stderr.write(f"BROKEN: {problem}")
            raise CommandError(f"{len(problems)} ledger invariant(s) broken")
        self.stdout.write("Ledger audit: every invariant holds.")
