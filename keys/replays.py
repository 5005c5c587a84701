"""Idempotent authorize: a retry sent with the same `Idempotency-Key` gets the first answer and
holds nothing more. Only an allowed decision is remembered (it is the only one that wrote
anything); a refused request sent again is decided again. The key is scoped to the calling
service token, so two callers cannot collide."""

from __future__ import annotations

from dataclasses import dataclass

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


def first_answer(idempotency: Idempotency) -> tuple[int, dict] | None:
    """(status, body) to replay, or None when the key was not used yet. A key used for another
    request is a 409."""
    first = (
        KeyJob.objects.filter(idempotency_key=idempotency.key)
        .values_list("request_fingerprint", "first_response")
        .first()
    )
    if first is None:
        return None
    fingerprint, body = first
    if fingerprint != idempotency.fingerprint:
        return 409, {
            "allowed": False,
            "code": "idempotency_conflict",
            "message": "This Idempotency-Key was used for another request.",
            "job_id": None,
            "project": None,
            "limits": body["limits"],
        }
    return 200, body
