"""Per-minute request and unit limits of API keys, shared by every process through Redis.

A sliding log per key and scope (the whole key, `*`, or one service): a sorted set of the
authorized jobs by time, a hash of each job's units and a running total. One Lua script trims
what left the window, checks every scope and, only if all pass, records the job in all of them,
so the check and the count are one atomic step however many replicas ask at once. The estimate
counts now; `units_correct` replaces it with the actual units once usage is posted, and
`hit_undo` takes a job back out when the request was refused for credits after all.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from django.conf import settings

WINDOW_MS = 60_000
NO_LIMIT = -1

# KEYS: per scope a sorted set, a hash and a total. ARGV: window, member, units, then per
# scope its request and unit limits (-1: none). Returns allowed, the refused kind (1 requests,
# 2 units, 3 units above the limit itself), the refused scope (1-based), milliseconds until a
# retry can pass, then per scope: requests and units in the window, ms until the oldest leaves.
_HIT = """
local window = tonumber(ARGV[1])
local member = ARGV[2]
local units = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS / 3
local refused, refused_scope, retry = 0, 0, 0
local counts, used = {}, {}
for i = 1, n do
  local z, h, total = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  while true do
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - window, 'LIMIT', 0, 500)
    if #old == 0 then break end
    local freed = 0
    for _, v in ipairs(redis.call('HMGET', h, unpack(old))) do
      if v then freed = freed + tonumber(v) end
    end
    redis.call('ZREM', z, unpack(old))
    redis.call('HDEL', h, unpack(old))
    if freed > 0 then redis.call('DECRBY', total, string.format('%d', freed)) end
  end
  counts[i] = redis.call('ZCARD', z)
  used[i] = tonumber(redis.call('GET', total) or '0')
  local request_limit, unit_limit = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  if refused == 0 and request_limit >= 0 and counts[i] + 1 > request_limit then
    refused, refused_scope = 1, i
    local index = counts[i] - request_limit
    local oldest = redis.call('ZRANGE', z, index, index, 'WITHSCORES')
    retry = oldest[2] and (tonumber(oldest[2]) + window - now) or window
  elseif refused == 0 and unit_limit >= 0 and used[i] + units > unit_limit then
    refused, refused_scope = 2, i
    if units > unit_limit then
      refused, retry = 3, 0
    else
      local need, start = used[i] + units - unit_limit, 0
      while need > 0 do
        local batch = redis.call('ZRANGE', z, start, start + 199, 'WITHSCORES')
        if #batch == 0 then break end
        for j = 1, #batch, 2 do
          need = need - tonumber(redis.call('HGET', h, batch[j]) or '0')
          if need <= 0 then retry = tonumber(batch[j + 1]) + window - now break end
        end
        start = start + 200
      end
    end
  end
end
local out = {refused == 0 and 1 or 0, refused, refused_scope, math.max(retry, 0)}
for i = 1, n do
  local z, h, total = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  if refused == 0 then
    redis.call('ZADD', z, now, member)
    redis.call('HSET', h, member, string.format('%d', units))
    used[i] = redis.call('INCRBY', total, string.format('%d', units))
    counts[i] = counts[i] + 1
    for _, k in ipairs({z, h, total}) do redis.call('PEXPIRE', k, window + 1000) end
  end
  local oldest = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  local reset = oldest[2] and (tonumber(oldest[2]) + window - now) or 0
  table.insert(out, counts[i])
  table.insert(out, used[i])
  table.insert(out, math.max(reset, 0))
end
return out
"""

# KEYS as above; ARGV: member, units. Sets a recorded job's units (the actual ones), or, with
# units -1, removes the job. A job no longer in the window is left alone. Safe to repeat.
_ADJUST = """
local member, units = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS / 3 do
  local z, h, total = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local before = redis.call('HGET', h, member)
  if before then
    if units < 0 then
      redis.call('ZREM', z, member)
      redis.call('HDEL', h, member)
      redis.call('DECRBY', total, before)
    else
      redis.call('HSET', h, member, string.format('%d', units))
      redis.call('INCRBY', total, string.format('%d', units - tonumber(before)))
    end
  end
end
return 1
"""


class RateLimiterUnavailable(Exception):
    """Redis did not answer: the caller decides whether to fail closed or open."""


@dataclass(frozen=True)
class ScopeLimit:
    scope: str  # "*" or a service slug
    requests_per_minute: int | None
    units_per_minute: int | None


@dataclass(frozen=True)
class ScopeUsage:
    limit: ScopeLimit
    requests: int
    units: int
    reset_ms: int

    @property
    def requests_remaining(self) -> int | None:
        if self.limit.requests_per_minute is None:
            return None
        return max(self.limit.requests_per_minute - self.requests, 0)

    @property
    def units_remaining(self) -> int | None:
        if self.limit.units_per_minute is None:
            return None
        return max(self.limit.units_per_minute - self.units, 0)


@dataclass(frozen=True)
class HitResult:
    allowed: bool
    refused: str  # "", "requests", "units" or "units_above_limit"
    refused_scope: str
    retry_after_ms: int
    scopes: list[ScopeUsage]


_REFUSED = {0: "", 1: "requests", 2: "units", 3: "units_above_limit"}


@functools.cache
def redis_client(url: str) -> redis.Redis:
    timeout = settings.RATE_LIMIT_REDIS_TIMEOUT_SECONDS
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
    )


@functools.cache
def _scripts(url: str) -> tuple[redis.commands.core.Script, redis.commands.core.Script]:
    client = redis_client(url)
    return client.register_script(_HIT), client.register_script(_ADJUST)


def _redis_keys(key_id: int, scopes: Sequence[str]) -> list[str]:
    # One hash tag per API key: all its counters live in one cluster slot.
    names = []
    for scope in scopes:
        base = f"rl:{{k{key_id}}}:{scope}"
        names += [f"{base}:z", f"{base}:h", f"{base}:t"]
    return names


def _limit_arg(value: int | None) -> int:
    return NO_LIMIT if value is None else value


def hit(*, key_id: int, limits: Sequence[ScopeLimit], member: str, units: int) -> HitResult:
    """Count one request of `units` against every scope, or none if any scope refuses."""
    hit_script, _ = _scripts(settings.REDIS_URL)
    args: list[object] = [WINDOW_MS, member, units]
    for limit in limits:
        args += [_limit_arg(limit.requests_per_minute), _limit_arg(limit.units_per_minute)]
    try:
        raw = hit_script(keys=_redis_keys(key_id, [limit.scope for limit in limits]), args=args)
    except redis.RedisError as exc:
        raise RateLimiterUnavailable(str(exc)) from exc
    allowed, refused, refused_scope, retry = (int(v) for v in raw[:4])
    usages = [
        ScopeUsage(
            limit=limit,
            requests=int(raw[4 + 3 * i]),
            units=int(raw[5 + 3 * i]),
            reset_ms=int(raw[6 + 3 * i]),
        )
        for i, limit in enumerate(limits)
    ]
    return HitResult(
        allowed=bool(allowed),
        refused=_REFUSED[refused],
        refused_scope=limits[refused_scope - 1].scope if refused_scope else "",
        retry_after_ms=retry,
        scopes=usages,
    )


def _adjust(key_id: int, scopes: Sequence[str], member: str, units: int) -> None:
    _, adjust_script = _scripts(settings.REDIS_URL)
    try:
        adjust_script(keys=_redis_keys(key_id, scopes), args=[member, units])
    except redis.RedisError as exc:
        raise RateLimiterUnavailable(str(exc)) from exc


def units_correct(*, key_id: int, scopes: Sequence[str], member: str, units: int) -> None:
    """The job's actual units replace its estimate in the window (if it is still in it)."""
    _adjust(key_id, scopes, member, units)


def hit_undo(*, key_id: int, scopes: Sequence[str], member: str) -> None:
    """Take a counted job back out: the request was refused after the limits passed."""
    _adjust(key_id, scopes, member, -1)


def seconds_ceil(milliseconds: int) -> int:
    return math.ceil(milliseconds / 1000)
