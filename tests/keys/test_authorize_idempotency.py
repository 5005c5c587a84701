"""POST /api/v1/authorize with an Idempotency-Key: a retry gets the first answer, holds nothing
more and counts nothing more."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connections

from accounts.models import Scope
from accounts.services import service_token_create
from billing.selectors import project_balances
from keys.authorize import authorize_once
from keys.models import KeyJob
from metering.models import Job

pytestmark = pytest.mark.django_db


def post(client, key, idempotency_key, units=100):
    return client.post(
        "/api/v1/authorize",
        {"key": key, "service": "ml-llm", "units": units},
        format="json",
        HTTP_IDEMPOTENCY_KEY=idempotency_key,
    )


def test_a_retry_gets_the_first_answer_and_holds_nothing_more(cast, gateway, make_key):
    _, full = make_key(limits={"ml-llm": {"requests_per_minute": 5}}, credit_limit="10")
    first = post(gateway, full, "req-1")
    again = post(gateway, full, "req-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert Job.objects.count() == 1
    assert project_balances([cast.alpha])[0].reserved == Decimal("1")
    other = post(gateway, full, "req-2")
    assert other.json()["job_id"] != first.json()["job_id"]
    assert other.json()["limits"]["requests"]["remaining"] == 3  # the retry was not counted


def test_the_same_key_for_another_request_is_409(gateway, make_key):
    _, full = make_key()
    assert post(gateway, full, "req-1", units=100).status_code == 200
    response = post(gateway, full, "req-1", units=101)
    assert (response.status_code, response.json()["code"]) == (409, "idempotency_conflict")
    assert Job.objects.count() == 1


def test_a_refusal_is_not_remembered(gateway, make_key):
    _, full = make_key()
    assert post(gateway, full, "req-1", units=20_000).status_code == 402
    assert post(gateway, full, "req-1", units=20_000).status_code == 402
    assert KeyJob.objects.count() == 0


def test_two_tokens_may_use_the_same_key(cast, gateway, make_key, token_client):
    _, full = make_key()
    other = token_client([Scope.AUTHORIZE])
    first, second = post(gateway, full, "req-1"), post(other, full, "req-1")
    assert first.json()["job_id"] != second.json()["job_id"]


def test_an_overlong_key_is_400(gateway, make_key):
    _, full = make_key()
    response = post(gateway, full, "x" * 201)
    assert (response.status_code, response.json()["code"]) == (400, "bad_request")


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_hold_once(cast, make_key):
    _, full = make_key(limits={"ml-llm": {"requests_per_minute": 100}})
    token, _ = service_token_create(name="gateway", scopes=[Scope.AUTHORIZE])
    barrier = threading.Barrier(8)

    def one(_: int) -> tuple[int, str]:
        try:
            barrier.wait()
            decision = authorize_once(
                token=token, raw_key=full, slug="ml-llm", units=100, header="same"
            )
            return decision.status, str(decision.job_id)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(8)))
    assert {status for status, _ in answers} == {200}
    assert len({job for _, job in answers}) == 1
    assert Job.objects.count() == 1
    assert project_balances([cast.alpha])[0].reserved == Decimal("1")
