from __future__ import annotations

from celery import shared_task
from django.core.cache import cache
from django.utils import timezone

HEARTBEAT_CACHE_KEY = "celery:worker-heartbeat"


@shared_task(name="core.worker_heartbeat", ignore_result=False)
def worker_heartbeat() -> str:
    """Proves the broker → worker → cache path; beat runs it every minute."""
    now = timezone.now().isoformat()
    cache.set(HEARTBEAT_CACHE_KEY, now, timeout=None)
    return now
