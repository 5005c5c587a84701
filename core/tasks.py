from __future__ import annotations

from celery import shared_task
from django.core.cache import cache
from django.db import OperationalError
from django.utils import timezone

# A lost connection or a serialization failure is worth another try, a little later each time.
RETRY_ON_DB_ERRORS = {"autoretry_for": (OperationalError,), "retry_backoff": True, "max_retries": 5}

HEARTBEAT_CACHE_KEY = "celery:worker-heartbeat"


@shared_task(name="core.worker_heartbeat", ignore_result=False)
def worker_heartbeat() -> str:
    """Proves the broker → worker → cache path; beat runs it every minute."""
    now = timezone.now().isoformat()
    cache.set(HEARTBEAT_CACHE_KEY, now, timeout=None)
    return now
