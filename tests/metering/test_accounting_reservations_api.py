"""/api/accounting/reservation/...: the SDK's wire bodies, the reference's statuses."""

import uuid

import pytest

from billing import services as billing
from billing.models import JournalEntry
from metering.models import Job
from tests.metering.test_reservations import priced_service

USER = str(uuid.uuid4())


@pytest.fixture
def gateway(token_client, db):
    return token_client(["accounting"])


@pytest.fixture
def funded(cast):
    priced_service()
    priced_service("single-cell-sim", "longrun", None)
    billing.budget_grant(project=cast.alpha, amount="400")
    return cast


def post(client, path, body):
    return client.post(f"/api/accounting/{path}", body, format="json")


def longrun(cast):
    # What the SDK sends for a longrun reservation (numbers as JSON numbers here).
    return {
        "type": "longrun",
        "subtype": "single-cell-sim",
        "proj_id": str(cast.alpha.uuid),
        "user_id": USER,
        "name": None,
        "duration": 5,
        "instances": 2,
        "instance_type": "FARGATE",
    }


def oneshot(cast, count="1000000"):
    # Exactly what obp-accounting-sdk 0.6.x sends: the count as a string.
    return {
        "type": "oneshot",
        "subtype": "ml-llm",
        "proj_id": str(cast.alpha.uuid),
        "user_id": USER,
        "name": "q",
        "count": count,
    }


def test_oneshot_reservation_and_release(gateway, funded):
    response = post(gateway, "reservation/oneshot", oneshot(funded))
    assert response.status_code == 201
    body = response.json()
    assert body["message"] == "Oneshot reservation executed"
    assert body["data"]["amount"] == "10.000000"
    job_id = body["data"]["job_id"]
    assert Job.objects.get(uuid=job_id).user_uuid == uuid.UUID(USER)
    released = gateway.delete(f"/api/accounting/reservation/oneshot/{job_id}")
    assert released.json() == {
        "message": "Oneshot reservation has been released",
        "data": {"job_id": job_id, "amount": "10.000000"},
    }
    again = gateway.delete(f"/api/accounting/reservation/oneshot/{job_id}")
    assert again.status_code == 400
    assert again.json()["error_code"] == "JOB_ALREADY_CANCELLED"


def test_insufficient_funds_is_402_with_the_requested_amount(gateway, funded):
    response = post(gateway, "reservation/oneshot", oneshot(funded, "40000001"))
    assert response.status_code == 402
    assert response.json() == {
        "error_code": "INSUFFICIENT_FUNDS",
        "message": "Reservation not allowed because of insufficient funds",
        "details": {"requested_amount": "400.000010"},
    }
    assert Job.objects.count() == 0


def test_longrun_reservation(gateway, funded):
    body = longrun(funded)
    response = post(gateway, "reservation/longrun", body)
    assert response.status_code == 201
    job_id = response.json()["data"]["job_id"]
    # The oneshot route does not know a longrun job.
    wrong = gateway.delete(f"/api/accounting/reservation/oneshot/{job_id}")
    assert wrong.status_code == 404
    assert wrong.json()["message"] == "The specified job cannot be found"
    assert gateway.delete(f"/api/accounting/reservation/longrun/{job_id}").status_code == 200


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"count": "ten"}, 422),
        ({"count": -1}, 422),
        ({"subtype": "ml-retrieval"}, 422),
        ({"subtype": "nope"}, 422),
        ({"proj_id": "not-a-uuid"}, 422),
        ({"user_id": None}, 422),
        ({"extra": 1}, 422),
        ({"proj_id": str(uuid.uuid4())}, 404),
        ({"subtype": "notebook"}, 404),  # no price for it
    ],
)
def test_bad_reservations_write_nothing(gateway, funded, change, status):
    before = JournalEntry.objects.count()
    response = post(gateway, "reservation/oneshot", oneshot(funded) | change)
    assert response.status_code == status
    assert Job.objects.count() == 0 and JournalEntry.objects.count() == before


def test_release_of_unknown_or_malformed_jobs(gateway, funded):
    assert gateway.delete(f"/api/accounting/reservation/oneshot/{uuid.uuid4()}").status_code == 404
    assert gateway.delete("/api/accounting/reservation/oneshot/xyz").status_code == 422


def test_the_outsider_cannot_reserve_on_or_release_another_labs_jobs(gateway, token_client, funded):
    job_id = post(gateway, "reservation/oneshot", oneshot(funded)).json()["data"]["job_id"]
    charlie = token_client(["accounting"], lab=funded.charlie_lab)
    assert post(charlie, "reservation/oneshot", oneshot(funded)).status_code == 404
    assert charlie.delete(f"/api/accounting/reservation/oneshot/{job_id}").status_code == 404
    assert Job.objects.get(uuid=job_id).cancelled_at is None
