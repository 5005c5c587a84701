"""Mail to people: one subject prefix on every mail, the one allauth's mails carry."""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings
from django.core.mail import send_mail


def people_mail(subject: str, body: str, recipients: Sequence[str]) -> None:
    """Send from DEFAULT_FROM_EMAIL, the subject after ACCOUNT_EMAIL_SUBJECT_PREFIX."""
    send_mail(settings.ACCOUNT_EMAIL_SUBJECT_PREFIX + subject, body, None, list(recipients))
