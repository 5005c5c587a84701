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

# A counter is a hash: `n`, the requests counted this period, and `r`, how many times an
# operator reset it, so that a request counted before a reset is not taken back out of the
# requests counted after it.

# KEYS: a counter per scope. ARGV: expiry (Unix ms), then per scope its quota. Returns allowed,
# the refused scope (1-based, 0: none), per scope the requests counted this period, then (if
# allowed) per scope its resets so far.
_CONSUME = """
local used = {}
for i = 1, #KEYS do
  used[i] = tonumber(redis.call('HGET', KEYS[i], 'n') or '0')
  if used[i] + 1 > tonumber(ARGV[i + 1]) then
    local out = {0, i}
    for j = 1, #KEYS do
      table.insert(out, used[j] or tonumber(redis.call('HGET', KEYS[j], 'n') or '0'))
    end
    return out
  end
end
local out = {1, 0}
for i = 1, #KEYS do
  table.insert(out, redis.call('HINCRBY', KEYS[i], 'n', 1))
  redis.call('PEXPIREAT', KEYS[i], ARGV[1])
end
for i = 1, #KEYS do
  table.insert(out, tonumber(redis.call('HGET', KEYS[i], 'r') or '0'))
end
return out
"""

# KEYS: the counters of one request; ARGV: per counter its resets when the request was counted.
# Takes the request back out of each counter not reset since; never below zero. Safe to call
# once per counted request.
_GIVE_BACK = """
for i = 1, #KEYS do
  local n = tonumber(redis.call('HGET', KEYS[i], 'n') or '0')
  if n > 0 and tonumber(redis.call('HGET', KEYS[i], 'r') or '0') == tonumber(ARGV[i]) then
    redis.call('HINCRBY', KEYS[i], 'n', -1)
  end
end
return 1
"""

# KEYS: one counter; ARGV: its expiry (Unix ms). Counts from zero again.
_RESET = """
redis.call('HSET', KEYS[1], 'n', 0)
redis.call('HINCRBY', KEYS[1], 'r', 1)
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
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
        # keeps them with the rate-limit windows. `:h`: hashes; the counters of the first
        # release were strings, named without it, and are left to expire.
        return [f"rl:{{p{self.subscription}}}:{index}:{scope}:h" for scope, _ in self.limits]

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
    resets: list[int]  # each counter's resets when it was counted, for give_back


@dataclass(frozen=True)
class _Scripts:
    consume: Any
    give_back: Any
    reset: Any


@functools.cache
def _scripts(url: str) -> _Scripts:
    client = redis_client(url)
    return _Scripts(*(client.register_script(lua) for lua in (_CONSUME, _GIVE_BACK, _RESET)))


def _expiry_ms(period_end: datetime) -> int:
    return int((period_end + COUNTER_GRACE).timestamp() * 1000)


def consume(quotas: PlanQuotas, at: datetime) -> QuotaResult:
    """Count one request in every scope, or in none if one has no request left."""
    index, _, end = quotas.bounds(at)
    counters = quotas.counters(index)
    try:
        raw = _scripts(settings.REDIS_URL).consume(
            keys=counters, args=[_expiry_ms(end), *(requests for _, requests in quotas.limits)]
        )
    except redis.RedisError as exc:
        raise RateLimiterUnavailable(str(exc)) from exc
    refused, scopes = int(raw[1]), len(counters)
    return QuotaResult(
        allowed=bool(int(raw[0])),
        refused_scope=quotas.limits[refused - 1][0] if refused else "",
        used=[int(value) for value in raw[2 : 2 + scopes]],
        period_end=end,
        counters=counters,
        resets=[int(value) for value in raw[2 + scopes :]],
    )


def give_back(result: QuotaResult) -> None:
    """Take a counted request back out of the period it was counted in: it was refused after
    its quota passed. A counter reset since keeps its count."""
    try:
        _scripts(settings.REDIS_URL).give_back(keys=result.counters, args=result.resets)
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
    index, _, end = quotas.bounds(at)
    counter = quotas.counters(index)[scopes.index(scope)]
    try:
        _scripts(settings.REDIS_URL).reset(keys=[counter], args=[_expiry_ms(end)])
    except redis.RedisError as exc:
        raise RateLimiterUnavailable(str(exc)) from exc
    return True


def left(quotas: PlanQuotas, at: datetime) -> list[QuotaLeft]:
    """Each quota with the requests counted against it this period."""
    if not quotas.limits:
        return []
    pipeline = redis_client(settings.REDIS_URL).pipeline(transaction=False)
    for counter in quotas.counters(quotas.bounds(at)[0]):
        pipeline.hget(counter, "n")
    try:
        values = pipeline.execute()
    except redis.RedisError as exc:
        raise RateLimiterUnavailable(str(exc)) from exc
    return [
        QuotaLeft(scope, limit, int(value or 0))
        for (scope, limit), value in zip(quotas.limits, values, strict=True)
    ]
