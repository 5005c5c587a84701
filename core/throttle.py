"""Per-user limits on page actions that reach other people or make rows (invitations mail
strangers; labs are free to create): a fixed window counted in Redis. They fail open, since
they protect against abuse, not money."""

from __future__ import annotations

import logging
import time

from django.core.cache import cache
from redis import RedisError

logger = logging.getLogger(__name__)


def within_limit(*, user_id: int, action: str, most: int, seconds: int) -> bool:
    """Count one `action` of the user; False once they made more than `most` in this window."""
    key = f"throttle:{action}:{user_id}:{int(time.time() // seconds)}"
    try:
        cache.add(key, 0, seconds)
        return cache.incr(key) <= most
    except RedisError:
        logger.warning("throttle %s: the cache did not answer; allowed", action)
        return True
