"""DRF authentication for service tokens: `Authorization: Bearer st_<lookup>_<secret>`."""

from __future__ import annotations

import re
from datetime import timedelta

from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.models import ServiceToken
from core.db import Columns, execute_prepared
from core.secrets import secret_matches

# Anything else (a NUL byte, spaces, unicode) is refused before it reaches the database.
TOKEN_SHAPE = re.compile(r"st_[a-z0-9]{1,32}_[A-Za-z0-9_\-]{1,200}")

MALFORMED = "Malformed Authorization header."
REFUSED = "Invalid or revoked service token."

# last_used_at is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


# Every request of a service or gateway runs this: one prepared statement, not an ORM query.
TOKEN = Columns(ServiceToken, "t")
_TOKEN_ROW = f"SELECT {TOKEN.sql} FROM accounts_servicetoken t WHERE t.lookup_id = %s"  # noqa: S608


def token_parts(raw: str) -> tuple[str, str] | None:
    """(lookup id, secret) of a presented token string, or None when it cannot be one."""
    if not raw.startswith(ServiceToken.PREFIX) or not TOKEN_SHAPE.fullmatch(raw):
        return None
    lookup_id, sep, secret = raw.removeprefix(ServiceToken.PREFIX).partition("_")
    if not sep or not lookup_id or not secret:
        return None
    return lookup_id, secret


def token_verified(token: ServiceToken | None, secret: str) -> ServiceToken | None:
    """The token read by its lookup id, if the secret is its own (constant-time) and it is
    active; its last use is recorded."""
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


def service_token_authenticate(raw: str) -> ServiceToken | None:
    """The active token for a presented string, or None. Constant-time secret comparison."""
    parts = token_parts(raw)
    if parts is None:
        return None
    rows = execute_prepared(_TOKEN_ROW, [parts[0]])
    return token_verified(TOKEN.load(rows[0]) if rows else None, parts[1])


class ServiceTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    @classmethod
    def presented(cls, request: HttpRequest | Request) -> str | None:
        """The token string of a Bearer header; None without one. Malformed: 401."""
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        keyword, _, raw = header.strip().partition(" ")
        if keyword.lower() != cls.keyword.lower():
            return None
        raw = raw.strip()
        if not raw or " " in raw:
            raise exceptions.AuthenticationFailed(MALFORMED)
        return raw

    def authenticate(self, request: Request) -> tuple[ServiceToken, ServiceToken] | None:
        raw = self.presented(request)
        if raw is None:
            return None
        token = service_token_authenticate(raw)
        if token is None:
            raise exceptions.AuthenticationFailed(REFUSED)
        return token, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
