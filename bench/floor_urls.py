"""The smallest requests that make authorize's round trips, for `make bench-floor` only (the
production URLconf plus these; never deployed). Each is a POST with a JSON body through the
whole middleware stack, as authorize is, and adds one round trip to the one before:

- floor/token: the service token checked (one prepared statement, HMAC compared);
- floor/token-insert: and one one-row INSERT, committed (fsync on, as in production): the
  round trips of an accounting reservation or usage, each of which writes far more;
- floor/token-redis: the token and one Redis script call (INCR of one key);
- floor/token-redis-insert: the token, the Redis call and the INSERT: authorize's three round
  trips, where authorize writes a ledger entry of seven rows, a job, its KeyJob row and the
  key's cap, and its Redis script keeps two sliding windows.
"""

from __future__ import annotations

import json

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from accounts.authentication import ServiceTokenAuthentication, service_token_authenticate
from config.urls import urlpatterns as production_urls
from core.db import execute_prepared

SCRATCH_TABLE = "bench_floor_row"
SCRATCH_TABLE_SQL = f"CREATE TABLE IF NOT EXISTS {SCRATCH_TABLE} (id bigserial PRIMARY KEY, n int8)"
_INSERT = f"INSERT INTO {SCRATCH_TABLE} (n) VALUES (%(n)s)"  # noqa: S608

_redis = redis.Redis.from_url(settings.REDIS_URL)
_incr = _redis.register_script("return redis.call('INCR', KEYS[1])")


def _checked(request: HttpRequest) -> HttpResponse | None:
    json.loads(request.body)
    raw = ServiceTokenAuthentication.presented(request)
    if raw is None or service_token_authenticate(raw) is None:
        return HttpResponse(status=401)
    return None


def _answer(n: int) -> HttpResponse:
    return HttpResponse(json.dumps({"allowed": True, "n": n}), content_type="application/json")


@csrf_exempt
def token(request: HttpRequest) -> HttpResponse:
    return _checked(request) or _answer(0)


@csrf_exempt
def token_insert(request: HttpRequest) -> HttpResponse:
    if refused := _checked(request):
        return refused
    execute_prepared(_INSERT, {"n": 0})  # autocommit: the INSERT commits by itself
    return _answer(0)


@csrf_exempt
def token_redis(request: HttpRequest) -> HttpResponse:
    return _checked(request) or _answer(_incr(keys=["bench-floor"]))


@csrf_exempt
def token_redis_insert(request: HttpRequest) -> HttpResponse:
    if refused := _checked(request):
        return refused
    n = _incr(keys=["bench-floor"])
    execute_prepared(_INSERT, {"n": n})  # autocommit: the INSERT commits by itself
    return _answer(n)


urlpatterns = [
    *production_urls,
    path("floor/token", token),
    path("floor/token-insert", token_insert),
    path("floor/token-redis", token_redis),
    path("floor/token-redis-insert", token_redis_insert),
]
