"""Idempotent authorize: a retry sent with the same `Idempotency-Key` gets the first answer and
holds nothing more. Only an allowed decision is remembered (it is the only one that wrote
anything); a refused request sent again is decided again. The key is scoped to the calling
service token, so two callers cannot collide."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.utils import timezone

from core.secrets import secret_hash
from keys.models import KeyJob

MAX_LENGTH = 200


@dataclass(frozen=True)
class Idempotency:
    key: str  # "<token id>:<the caller's key>"
    fingerprint: str  # peppered HMAC of the request: the full API key is in it

    @classmethod
    def of(cls, *, token_id: int, header: str, raw_key: str, slug: str, units: int):
        return cls(f"{token_id}:{header}", secret_hash(f"{raw_key}\n{slug}\n{units}"))


def first_answer(
    idempotency: Idempotency, *, now: datetime | None = None
) -> tuple[int, dict] | None:
    """(status, body) to replay, or None when the key was not used yet, or when its answer no
    longer holds: the key was revoked or expired, or the job's reservation was released or
    expired (the request is then decided again, and that decision is not remembered). A key used
    for another request is a 409."""
    now = now or timezone.now()
    first = (
        KeyJob.objects.filter(idempotency_key=idempotency.key)
        .values_list(
            "request_fingerprint",
            "first_response",
            "key__revoked_at",
            "key__expires_at",
            "job__cancelled_at",
        )
        .first()
    )
    if first is None:
        return None
    fingerprint, body, revoked_at, expires_at, cancelled_at = first
    if fingerprint != idempotency.fingerprint:
        return 409, {
            "allowed": False,
            "code": "idempotency_conflict",
            "message": "This Idempotency-Key was used for another request.",
            "job_id": None,
            "project": None,
            "limits": body["limits"],
        }
    expired = expires_at is not None and expires_at <= now
    if revoked_at is not None or expired or cancelled_at is not None:
        return None
    return 200, body


@contextmanager
def claimed(idempotency: Idempotency) -> Iterator[None]:
    """Serialises requests with one key (a session advisory lock, released however the block
    ends): a retry sent while the first is still in flight waits for its answer and replays it,
    instead of being counted and held a second time."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [idempotency.key])
        try:
            yield
        finally:
            cursor.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [idempotency.key])
