"""Celery tasks of keys: thin, each calls one service."""

from __future__ import annotations

from celery import shared_task

from core.tasks import RETRY_ON_DB_ERRORS
from keys import caps, services


@shared_task(name="keys.keys_expire", **RETRY_ON_DB_ERRORS)
def keys_expire() -> int:
    """Mark keys past their expiry (authorize refuses them from that moment already)."""
    return services.keys_expire()


@shared_task(name="keys.key_holds_release", **RETRY_ON_DB_ERRORS)
def key_holds_release() -> int:
    """Give back the cap holds of authorized jobs whose reservation was released or expired."""
    return caps.key_jobs_release()
