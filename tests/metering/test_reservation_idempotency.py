"""POST /api/accounting/reservation/... with an Idempotency-Key: a retry gets the first job back
and holds nothing more (DESIGN: POSTs that create reservations replay the first response)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal as D

import pytest
from django.db import connections

from billing import services as billing
from metering.models import Job
from metering.reservations import reservation_create, reservation_once
from tests.metering.test_accounting_reservations_api import longrun, oneshot
from tests.metering.test_reservations import budget, priced_service

pytestmark = pytest.mark.django_db


@pytest.fixture
def gateway(token_client):
    return token_client(["accounting"])


@pytest.fixture
def funded(cast):
    priced_service()
    priced_service("single-cell-sim", "longrun", None)
    billing.budget_grant(project=cast.alpha, amount="400")
    return cast


def post(client, path, body, key):
    return client.post(f"/api/accounting/{path}", body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_a_retry_gets_the_first_job_and_holds_nothing_more(gateway, funded):
    answers = [post(gateway, "reservation/oneshot", oneshot(funded), "r-1") for _ in range(3)]
    assert {answer.status_code for answer in answers} == {201}
    assert answers[1].json() == answers[2].json() == answers[0].json()
    assert Job.objects.count() == 1
    assert budget(funded.alpha).reserved == D("10")
    other = post(gateway, "reservation/oneshot", oneshot(funded), "r-2")
    assert other.json()["data"]["job_id"] != answers[0].json()["data"]["job_id"]
    assert budget(funded.alpha).reserved == D("20")


def test_equal_requests_are_one_request_however_the_count_is_written(gateway, funded):
    first = post(gateway, "reservation/oneshot", oneshot(funded, "1000"), "r-1")
    again = post(gateway, "reservation/oneshot", oneshot(funded, 1000), "r-1")
    assert again.status_code == 201
    assert again.json() == first.json()


def test_the_key_for_another_request_is_409_and_writes_nothing(gateway, funded):
    post(gateway, "reservation/oneshot", oneshot(funded, "1000"), "r-1")
    response = post(gateway, "reservation/oneshot", oneshot(funded, "1001"), "r-1")
    assert response.status_code == 409
    assert response.json()["error_code"] == "IDEMPOTENCY_CONFLICT"
    assert Job.objects.count() == 1


def test_a_refusal_is_not_remembered(gateway, funded):
    too_much = oneshot(funded, "40000001")  # 400.00001 credits, 400 granted
    assert post(gateway, "reservation/oneshot", too_much, "r-1").status_code == 402
    assert Job.objects.count() == 0
    billing.budget_grant(project=funded.alpha, amount="1")
    assert post(gateway, "reservation/oneshot", too_much, "r-1").status_code == 201


def test_the_key_is_scoped_to_the_calling_token(gateway, funded, token_client):
    other = token_client(["accounting"])
    first = post(gateway, "reservation/oneshot", oneshot(funded), "r-1")
    second = post(other, "reservation/oneshot", oneshot(funded), "r-1")
    assert first.json()["data"]["job_id"] != second.json()["data"]["job_id"]
    assert Job.objects.count() == 2


def test_a_released_reservation_is_replayed_as_it_was_not_reserved_again(gateway, funded):
    first = post(gateway, "reservation/longrun", longrun(funded), "r-1")
    job_id = first.json()["data"]["job_id"]
    assert gateway.delete(f"/api/accounting/reservation/longrun/{job_id}").status_code == 200
    again = post(gateway, "reservation/longrun", longrun(funded), "r-1")
    assert again.json() == first.json()
    assert budget(funded.alpha).reserved == 0


def test_an_overlong_key_is_422_and_writes_nothing(gateway, funded):
    response = post(gateway, "reservation/oneshot", oneshot(funded), "x" * 201)
    assert response.status_code == 422
    assert Job.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_hold_once(cast):
    service = priced_service()
    billing.budget_grant(project=cast.alpha, amount="400")
    barrier = threading.Barrier(8)

    def one(_: int) -> str:
        try:
            barrier.wait()
            job = reservation_once(
                idempotency_key="token:1:same",
                fingerprint="the same request",
                create=lambda: reservation_create(
                    project=cast.alpha,
                    service=service,
                    quantity=1000,
                    params={"count": 1000},
                    idempotency_key="token:1:same",
                    fingerprint="the same request",
                ),
            )
            return str(job.uuid)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = set(pool.map(one, range(8)))
    assert len(jobs) == 1
    assert Job.objects.count() == 1
    assert budget(cast.alpha).reserved == D("0.01")


def test_a_retry_is_answered_even_once_the_price_has_ended(gateway, funded):
    from django.utils import timezone

    from metering.models import Price

    first = post(gateway, "reservation/oneshot", oneshot(funded), "r-1")
    Price.objects.update(valid_to=timezone.now())  # no price now: a new request is a 404
    assert post(gateway, "reservation/oneshot", oneshot(funded), "r-2").status_code == 404
    again = post(gateway, "reservation/oneshot", oneshot(funded), "r-1")
    assert (again.status_code, again.json()) == (201, first.json())


def test_a_longrun_retry_without_an_instance_type_equals_one_with_null(gateway, funded):
    first = post(gateway, "reservation/longrun", longrun(funded) | {"instance_type": None}, "r")
    body = longrun(funded)
    del body["instance_type"], body["name"]
    again = post(gateway, "reservation/longrun", body, "r")
    assert (again.status_code, again.json()) == (201, first.json())


def test_a_reservation_without_a_key_stores_no_fingerprint(gateway, funded):
    post(gateway, "reservation/oneshot", oneshot(funded), "")
    assert Job.objects.get().request_fingerprint is None
