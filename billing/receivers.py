"""Every lab and project gets its ledger accounts in the transaction that creates it, and every
new personal lab the default plan, if there is one.

accounts cannot call billing (dependencies run billing → accounts), so billing listens."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.models import Lab, Project
from accounts.signals import personal_lab_created
from billing.plans import default_plan_subscribe
from billing.services import lab_account_open, project_accounts_open


@receiver(post_save, sender=Lab, dispatch_uid="billing_lab_account_open")
def _lab_created(sender: type[Lab], instance: Lab, created: bool, **kwargs: Any) -> None:
    if created and not kwargs.get("raw"):
        lab_account_open(lab=instance)


@receiver(post_save, sender=Project, dispatch_uid="billing_project_accounts_open")
def _project_created(
    sender: type[Project], instance: Project, created: bool, **kwargs: Any
) -> None:
    if created and not kwargs.get("raw"):
        project_accounts_open(project=instance)


@receiver(personal_lab_created, dispatch_uid="billing_default_plan_subscribe")
def _personal_lab_created(sender: type[Lab], lab: Lab, project: Project, **kwargs: Any) -> None:
    default_plan_subscribe(lab=lab, project=project)
