"""Plan request quotas: how many requests a lab's plan lets its keys authorize per plan period,
for one service or for every service together.

One Redis counter per subscription, period and scope, shared by every process; it lives until
a day after its period ends, so a new period starts from zero without a reset job. One Lua
script checks every scope and counts in all of them only if all pass, so exactly the quota
passes however many replicas ask at once; a request refused after it was counted (the key's
cap, the project's credits) is taken back out. A lab on no plan, or on a plan without quotas,
has none.
"""

from __future__ import annotations

import functools
import uuid as uuid_lib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings

from billing.plans import period_bounds, period_index_at
from keys.models import ALL_SERVICES
from keys.ratelimit import RateLimiterUnavailable, redis_client

COUNTER_GRACE = timedelta(days=1)

# KEYS: a counter per scope. ARGV: expiry (Unix ms), then per scope its quota. Returns allowed,
# the refused scope (1-based, 0: none), then per scope the requests counted this period.
_CONSUME = """
local used = {}
for i = 1, #KEYS do
  used[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used[i] + 1 > tonumber(ARGV[i + 1]) then
    local out = {0, i}
    for j = 1, #KEYS do
      table.insert(out, used[j] or tonumber(redis.call('GET', KEYS[j]) or '0'))
    end
    return out
  end
end
local out = {1, 0}
for i = 1, #KEYS do
  table.insert(out, redis.call('INCR', KEYS[i]))
  redis.call('PEXPIREAT', KEYS[i], ARGV[1])
end
return out
"""

# KEYS: the counters of one request. Takes it back out; never below zero. Safe to call once per
# counted request.
_GIVE_BACK = """
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
return 1
"""


@dataclass(frozen=True)
class PlanQuotas:
    """A lab's plan and the quotas that apply to one request (or, listed, all of them)."""

    subscription: uuid_lib.UUID
    plan: str  # the plan's slug
    started_at: datetime
    period: str
    limits: list[tuple[str, int]]  # (scope: "*" or a service slug, requests per period)

    def bounds(self, at: datetime) -> tuple[int, datetime, datetime]:
        index = period_index_at(started_at=self.started_at, period=self.period, at=at)
        start, end = period_bounds(started_at=self.started_at, period=self.period, index=index)
        return index, start, end

    def counters(self, index: int) -> list[str]:
        """The Redis counters of period `index`, one per quota."""
        # One hash tag per subscription: its counters share a cluster slot. The `rl:` prefix
        # keeps them with the rate-limit windows.
        return [f"rl:{{p{self.subscription}}}:{index}:{scope}" for scope, _ in self.limits]

    @classmethod
    def from_row(cls, value: dict[str, Any] | None) -> PlanQuotas | None:
        """From the JSON the key's statement reads (keys.authorize): None without quotas."""
        if not value or not value.get("quotas"):
            return None
        return cls(
            subscription=uuid_lib.UUID(value["subscription"]),
            plan=value["plan"],
            started_at=datetime.fromisoformat(value["started_at"]),
            period=value["period"],
            limits=[(scope or ALL_SERVICES, int(requests)) for scope, requests in value["quotas"]],
        )


@dataclass(frozen=True)
class QuotaResult:
    allowed: bool
    refused_scope: str
    used: list[int]  # per scope of PlanQuotas.limits
    period_end: datetime
    counters: list[str]  # where it was counted, for give_back


@functools.cache
def _scripts(url: str) -> tuple[Any, Any]:
    client = redis_client(url)
    return client.register_script(_CONSUME), client.register_script(_GIVE_BACK)


def consume(quotas: PlanQuotas, at: datetime) -> QuotaResult:
    """Count one request in every scope, or in none if one has no request left."""
    index, _, end = quotas.bounds(at)
    expires_ms = int((end + COUNTER_GRACE).timestamp() * 1000)
    counters = quotas.counters(index)
    consume_script, _ = _scripts(settings.REDIS_URL)
    try:
        raw = consume_script(
            keys=counters, args=[expires_ms, *(requests for _, requests in quotas.limits)]
        )
    except redis.RedisError as exc:
        raise RateLimiterUnavailable(str(exc)) from exc
    refused = int(raw[1])
    return QuotaResult(
        allowed=bool(int(raw[0])),
        refused_scope=quotas.limits[refused - 1][0] if refused else "",
        used=[int(value) for value in raw[2:]],
        period_end=end,
        counters=counters,
    )


def give_back(result: QuotaResult) -> None:
    """Take a counted request back out of the period it was counted in: it was refused after
    its quota passed."""
    _, give_back_script = _scripts(settings.REDIS_URL)
    try:
        give_back_script(keys=result.counters, args=[])
    except redis.RedisError as exc:
        raise RateLimiterUnavailable(str(exc)) from exc


@dataclass(frozen=True)
class QuotaLeft:
    scope: str  # "*" or a service slug
    limit: int
    used: int  # requests counted this period

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)


def reset(quotas: PlanQuotas, scope: str, at: datetime) -> bool:
    """Start this period's count of one quota ("*" or a service slug) again from zero, as an
    operator may for a lab that ran out. False, changing nothing: the plan has no such quota."""
    scopes = [name for name, _ in quotas.limits]
    if scope not in scopes:
        return False
    counter = quotas.counters(quotas.bounds(at)[0])[scopes.index(scope)]
    try:
        redis_client(settings.REDIS_URL).delete(counter)
    except redis.RedisError as exc:
        raise RateLimiterUnavailable(str(exc)) from exc
    return True


def left(quotas: PlanQuotas, at: datetime) -> list[QuotaLeft]:
    """Each quota with the requests counted against it this period."""
    if not quotas.limits:
        return []
    try:
        values = redis_client(settings.REDIS_URL).mget(quotas.counters(quotas.bounds(at)[0]))
    except redis.RedisError as exc:
        raise RateLimiterUnavailable(str(exc)) from exc
    return [
        QuotaLeft(scope, limit, int(value or 0))
        for (scope, limit), value in zip(quotas.limits, values, strict=True)
    ]
