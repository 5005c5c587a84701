"""Third review of issue 6 (end-user API keys): Idempotency-Key replays on POST /api/v1/authorize
and the cap/usage period handling. Each test names a behaviour that should hold and fails because
of a defect in 85a7ab7 or 3b48ab1."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings
from django.db import connections
from django.utils import timezone

from accounts.models import Scope
from accounts.services import service_token_create
from keys import authorize as authorize_module
from keys.authorize import authorize_once
from keys.services import key_revoke
from metering.models import Job
from metering.reservations import reservations_expire
from tests.keys.test_authorize_idempotency import post
from tests.keys.test_review_keys_second import me, settle

pytestmark = pytest.mark.django_db

NEW_MONTH = datetime(2031, 2, 1, tzinfo=UTC)


# Idempotency-Key ------------------------------------------------------------------------------


def test_an_idempotency_key_with_a_nul_byte_is_a_400_not_a_500(gateway, make_key):
    """A NUL in Idempotency-Key reaches PostgreSQL in first_answer's query and raises DataError."""
    _, full = make_key()
    response = post(gateway, full, "req\x00-1")
    assert (response.status_code, response.json()["code"]) == (400, "bad_request")


@pytest.mark.django_db(transaction=True)
def test_a_retry_sent_while_the_first_request_is_in_flight_is_not_refused_by_the_window(
    cast, make_key, monkeypatch
):
    """A retry that misses first_answer (the first has not committed) counts in the window before
    it reaches the unique index, so with the slot taken by its own first request it gets 429."""
    _, full = make_key(limits={"ml-llm": {"requests_per_minute": 1}})
    token, _ = service_token_create(name="gateway", scopes=[Scope.AUTHORIZE])
    counted, go = threading.Event(), threading.Event()
    real_reserve = authorize_module._reserve
    first_thread: list[threading.Thread] = []

    def slow_reserve(*args, **kwargs):
        if threading.current_thread() is first_thread[0]:
            counted.set()  # counted in the window, not yet committed: the gateway timed out
            go.wait(10)
        return real_reserve(*args, **kwargs)

    monkeypatch.setattr(authorize_module, "_reserve", slow_reserve)
    answers = {}

    def first() -> None:
        try:
            answers["first"] = authorize_once(
                token=token, raw_key=full, slug="ml-llm", units=100, header="req-1"
            )
        finally:
            connections.close_all()

    first_thread.append(threading.Thread(target=first))
    first_thread[0].start()
    assert counted.wait(10)
    retry = authorize_once(token=token, raw_key=full, slug="ml-llm", units=100, header="req-1")
    go.set()
    first_thread[0].join(10)
    assert answers["first"].status == 200
    assert (retry.status, retry.code) == (200, "allowed")
    assert retry.job_id == answers["first"].job_id


@pytest.mark.parametrize("closed_by", ["key revoked", "reservation expired"])
def test_a_replay_does_not_allow_a_request_the_key_or_its_job_can_no_longer_serve(
    cast, gateway, make_key, closed_by
):
    """authorize_once replays the remembered 200 before looking at the key or the job: a revoked
    key, or a job whose reservation expired (usage then refused), is still answered `allowed`."""
    key, full = make_key()
    first = post(gateway, full, "req-1")
    assert first.status_code == 200
    if closed_by == "key revoked":
        key_revoke(key=key)
    else:
        later = timezone.now() + timedelta(seconds=settings.RESERVATION_TTL_SECONDS + 1)
        assert reservations_expire(now=later) == 1
        assert Job.objects.get(uuid=first.json()["job_id"]).cancelled_at is not None
    again = post(gateway, full, "req-1")
    if closed_by == "key revoked":
        assert again.json()["allowed"] is False, again.json()
    else:  # decided again: a new hold, never the dead job
        assert again.json()["job_id"] != first.json()["job_id"], again.json()
        assert Job.objects.get(uuid=again.json()["job_id"]).cancelled_at is None


# key_usage ------------------------------------------------------------------------------------


def test_usage_this_month_counts_a_charge_settled_more_than_the_ttl_after_its_authorize(
    gateway, make_key
):
    """key_usage scans only KeyJobs created since `since - RESERVATION_TTL_SECONDS`, but nothing
    settles a job within the TTL (usage is accepted until the expiry sweep runs; the release task
    settles accounting-closed jobs later): the charge counts in February's cap and in no month's
    usage."""
    _, full = make_key(credit_limit="100", credit_limit_period="monthly")
    authorized_at = NEW_MONTH - timedelta(seconds=settings.RESERVATION_TTL_SECONDS + 10)
    with time_machine.travel(authorized_at, tick=False):
        job_id = post(gateway, full, "req-1").json()["job_id"]
    with time_machine.travel(NEW_MONTH + timedelta(seconds=5), tick=False):
        assert settle(gateway, job_id, 100).status_code == 200  # not swept yet: charged 1.00
        body = me(full).json()
    assert body["credit_limit"]["used"] == "1.000000"  # the cap counts it in February
    assert body["usage"]["this_month"]["charged"] == "1.000000"
