"""Forms a reload must not send twice: a page that creates an API key or rotates its secret
renders a one-use token, and the POST claims it atomically in the cache (Redis `SET NX`), so a
reload or a double click finds it spent instead of creating a second key or rotating again.
The token is signed for one user and one purpose; what it made is kept with it, so the second
POST can say which key that was. Nothing secret is stored."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
from dataclasses import dataclass

from django.core import signing
from django.core.cache import cache
from django.http import HttpRequest
from redis import RedisError

logger = logging.getLogger(__name__)

FIELD = "once"
MAX_AGE_SECONDS = 24 * 3600
_SALT = "core.once"
_CLAIMED = "-"  # claimed, nothing made yet


@dataclass(frozen=True)
class Claim:
    """A POST's token: `claimed` (go ahead, then `done` or `release`), or `spent` (sent
    before; `made` is what that POST made, if it finished), or neither (missing, forged,
    expired, another user's or another form's)."""

    cache_key: str | None
    claimed: bool = False
    spent: bool = False
    made: str | None = None
    unavailable: bool = False  # the cache did not answer: do nothing, ask to send it again

    def done(self, made: str) -> None:
        """Remember what the POST made, for a second one to name (best effort: the claim
        already stops a second POST)."""
        if self.cache_key is not None:
            with contextlib.suppress(RedisError):
                cache.set(self.cache_key, made, MAX_AGE_SECONDS)

    def release(self) -> None:
        """The POST made nothing (a form error): the same form may be sent again."""
        if self.cache_key is not None:
            with contextlib.suppress(RedisError):
                cache.delete(self.cache_key)


def once_token(request: HttpRequest, purpose: str) -> str:
    return signing.dumps(
        {"u": request.user.pk, "p": purpose, "n": secrets.token_urlsafe(12)}, salt=_SALT
    )


def once_claim(request: HttpRequest, purpose: str) -> Claim:
    token = request.POST.get(FIELD, "")
    try:
        value = signing.loads(token, salt=_SALT, max_age=MAX_AGE_SECONDS)
    except signing.BadSignature:
        return Claim(cache_key=None)
    signed_for = (value.get("u"), value.get("p")) if isinstance(value, dict) else None
    if signed_for != (request.user.pk, purpose):
        return Claim(cache_key=None)
    cache_key = "once:" + hashlib.sha256(token.encode()).hexdigest()
    try:
        if cache.add(cache_key, _CLAIMED, MAX_AGE_SECONDS):
            return Claim(cache_key=cache_key, claimed=True)
        made = cache.get(cache_key)
    except RedisError:
        logger.exception("one-use form token: the cache did not answer")
        return Claim(cache_key=None, unavailable=True)
    return Claim(cache_key=None, spent=True, made=None if made in (None, _CLAIMED) else made)
