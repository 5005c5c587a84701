"""What keys does when accounts announces a change (accounts cannot call keys: dependencies
run keys → accounts)."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from accounts.models import Lab, User
from accounts.signals import membership_removed
from keys.services import member_keys_revoke


@receiver(membership_removed, dispatch_uid="keys_member_keys_revoke")
def _membership_removed(
    sender: object, *, lab: Lab, user: User, by: User | None, **kwargs: Any
) -> int:
    return member_keys_revoke(lab=lab, user=user, by=by)
