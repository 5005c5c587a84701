"""Redis unavailable: authorize fails closed (503) unless rate limits may fail open; the
credit checks, in PostgreSQL, hold either way."""

from __future__ import annotations

import pytest

from metering.models import Job
from tests.keys.conftest import authorize

pytestmark = pytest.mark.django_db

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture
def redis_down(settings):
    settings.REDIS_URL = NOWHERE
    settings.RATE_LIMIT_REDIS_TIMEOUT_SECONDS = 0.2


def test_it_answers_503_when_redis_is_down(gateway, make_key, redis_down):
    _, full = make_key(limits={"ml-llm": {"requests_per_minute": 10}})
    response = authorize(gateway, full)
    assert response.status_code == 503
    assert response.json()["code"] == "rate_limiter_unavailable"
    assert response["Retry-After"] == "1"
    assert Job.objects.count() == 0


def test_fail_open_skips_rate_limits_but_not_credits(gateway, make_key, redis_down, settings):
    settings.RATE_LIMITS_FAIL_OPEN = True
    _, full = make_key(limits={"ml-llm": {"requests_per_minute": 1}}, credit_limit="1")
    assert authorize(gateway, full, units=60).status_code == 200
    assert authorize(gateway, full, units=40).status_code == 200  # the rate limit is skipped
    response = authorize(gateway, full, units=1)
    assert (response.status_code, response.json()["code"]) == (402, "key_credit_limit")
    response = authorize(gateway, full, units=20_000)
    assert response.status_code == 402


def test_keys_without_any_limit_do_not_need_redis(gateway, make_key, redis_down):
    _, full = make_key()
    assert authorize(gateway, full).status_code == 200
