"""DRF authentication for service tokens: `Authorization: Bearer st_<lookup>_<secret>`."""

from __future__ import annotations

import re
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.models import ServiceToken
from core.db import execute_prepared
from core.secrets import secret_matches

# Anything else (a NUL byte, spaces, unicode) is refused before it reaches the database.
TOKEN_SHAPE = re.compile(r"st_[a-z0-9]{1,32}_[A-Za-z0-9_\-]{1,200}")

# last_used_at is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


# Every request of a service or gateway runs this: one prepared statement, not an ORM query.
_TOKEN_FIELDS = [field.attname for field in ServiceToken._meta.concrete_fields]
_TOKEN_ROW = "SELECT {} FROM accounts_servicetoken WHERE lookup_id = %s".format(  # noqa: S608
    ", ".join(f'"{name}"' for name in _TOKEN_FIELDS)  # the model's own columns
)


def service_token_authenticate(raw: str) -> ServiceToken | None:
    """The active token for a presented string, or None. Constant-time secret comparison."""
    if not raw.startswith(ServiceToken.PREFIX):
        return None
    if not TOKEN_SHAPE.fullmatch(raw):
        return None
    lookup_id, sep, secret = raw.removeprefix(ServiceToken.PREFIX).partition("_")
    if not sep or not lookup_id or not secret:
        return None
    rows = execute_prepared(_TOKEN_ROW, [lookup_id])
    token = ServiceToken.from_db("default", _TOKEN_FIELDS, rows[0]) if rows else None
    if token is None or not secret_matches(secret, token.secret_hash) or not token.is_active:
        return None
    now = timezone.now()
    stale = now - LAST_USED_RESOLUTION
    if token.last_used_at is None or token.last_used_at < stale:
        # Conditional, so concurrent requests of one token write it once.
        ServiceToken.objects.filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale), pk=token.pk
        ).update(last_used_at=now)
    return token


class ServiceTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ServiceToken, ServiceToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        keyword, _, raw = header.strip().partition(" ")
        if keyword.lower() != self.keyword.lower():
            return None
        raw = raw.strip()
        if not raw or " " in raw:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        token = service_token_authenticate(raw)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked service token.")
        return token, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
