"""/api/accounting/usage/...: the SDK's wire bodies, answers up front, nothing written on error."""

import time
import uuid
from decimal import Decimal

import pytest

from accounts.services import project_create
from billing import services as billing
from billing.models import JournalEntry
from billing.selectors import project_balances
from metering.cost import Tier
from metering.models import Job
from tests.metering.test_accounting_reservations_api import longrun, oneshot, post
from tests.metering.test_reservations import priced_service

D = Decimal


@pytest.fixture
def gateway(token_client, db):
    return token_client(["accounting"])


@pytest.fixture
def funded(cast):
    priced_service()
    priced_service("single-cell-sim", "longrun", [Tier(0, None, D("1.5"), D("0.01"))])
    priced_service("storage", "storage", [Tier(0, None, D(0), D("0.000000001"))])
    billing.budget_grant(project=cast.alpha, amount="400")
    return cast


def now():
    return str(int(time.time()))


def reserve(client, cast, count="1000000"):
    response = post(client, "reservation/oneshot", oneshot(cast, count))
    assert response.status_code == 201, response.json()
    return response.json()["data"]["job_id"]


def oneshot_usage(cast, job_id, count="1500000", **changes):
    # Exactly what obp-accounting-sdk 0.6.x sends: count and timestamp as strings, no user_id.
    body = {
        "type": "oneshot",
        "subtype": "ml-llm",
        "proj_id": str(cast.alpha.uuid),
        "name": "q",
        "count": count,
        "job_id": job_id,
        "timestamp": now(),
    }
    return {**body, **changes}


def longrun_usage(cast, job_id, status, **changes):
    body = {
        "type": "longrun",
        "name": None,
        "subtype": "single-cell-sim",
        "job_id": job_id,
        "proj_id": str(cast.alpha.uuid),
        "instances": "2",
        "instance_type": "FARGATE",
        "status": status,
        "timestamp": now(),
    }
    return {**body, **changes}


def balance(project):
    state = project_balances([project])[0]
    return state.balance, state.reserved


def test_oneshot_usage_is_charged_when_posted(gateway, funded):
    job_id = reserve(gateway, funded)
    response = post(gateway, "usage/oneshot", oneshot_usage(funded, job_id))
    assert response.status_code == 201
    assert response.json() == {"message": "Oneshot usage received", "data": None}
    assert balance(funded.alpha) == (D("385"), 0)
    again = post(gateway, "usage/oneshot", oneshot_usage(funded, job_id))
    assert again.status_code == 201 and balance(funded.alpha) == (D("385"), 0)
    other = post(gateway, "usage/oneshot", oneshot_usage(funded, job_id, count="7"))
    assert other.status_code == 409 and other.json()["error_code"] == "JOB_ALREADY_FINISHED"


def test_longrun_events_start_beat_and_finish(gateway, funded):
    body = longrun(funded)
    job_id = post(gateway, "reservation/longrun", body).json()["data"]["job_id"]
    start = int(time.time()) - 100
    for status, moment in (("started", start), ("running", start + 30), ("finished", start + 100)):
        response = post(
            gateway, "usage/longrun", longrun_usage(funded, job_id, status, timestamp=str(moment))
        )
        assert response.status_code == 201, response.json()
        assert response.json()["message"] == "Longrun usage received"
    job = Job.objects.get(uuid=job_id)
    assert job.charged_amount == D("3.5")  # 2 instances x 100 s x 0.01 + 1.5
    assert job.closed_at is not None and balance(funded.alpha) == (D("396.5"), 0)


def test_storage_events_open_and_close_intervals(gateway, funded):
    body = {"type": "storage", "proj_id": str(funded.alpha.uuid), "size": 10**9}
    start = int(time.time()) - 1000
    first = post(gateway, "usage/storage", {**body, "timestamp": start})
    assert first.status_code == 201
    assert first.json() == {"message": "Storage usage received", "data": None}
    closed = post(gateway, "usage/storage", {**body, "size": "0", "timestamp": str(start + 1000)})
    assert closed.status_code == 201
    job = Job.objects.get(kind="storage")
    assert job.charged_amount == D("1000")  # 1e9 bytes x 1000 s x 1e-9
    assert balance(funded.alpha) == (D("-600"), 0)  # storage has no hold: the project owes


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"timestamp": str(int(time.time()) - 36 * 86400)}, ["body", "timestamp"]),
        ({"timestamp": str(int(time.time()) + 3600)}, ["body", "timestamp"]),
        ({"timestamp": "yesterday"}, ["body", "timestamp"]),
        ({"count": "ten"}, ["body", "count"]),
        ({"count": -1}, ["body", "count"]),
        ({"job_id": "not-a-uuid"}, ["body", "job_id"]),
        ({"unexpected": 1}, ["body", "unexpected"]),
        ({"subtype": "nope"}, ["body", "subtype"]),
    ],
)
def test_invalid_oneshot_usage_is_a_422_and_writes_nothing(gateway, funded, change, loc):
    job_id = reserve(gateway, funded)
    entries = JournalEntry.objects.count()
    response = post(gateway, "usage/oneshot", {**oneshot_usage(funded, job_id), **change})
    assert response.status_code == 422
    body = response.json()
    assert body["error_code"] == "INVALID_REQUEST" and body["message"] == "Validation error"
    assert [d["loc"] for d in body["details"]] == [loc]
    assert JournalEntry.objects.count() == entries


def test_usage_that_does_not_fit_its_job_is_refused_up_front(gateway, funded):
    job_id = reserve(gateway, funded)
    unknown = post(gateway, "usage/oneshot", oneshot_usage(funded, str(uuid.uuid4())))
    assert unknown.status_code == 404
    assert unknown.json()["message"] == "The specified job cannot be found"
    other_project = oneshot_usage(funded, job_id, proj_id=str(funded.beta.uuid))
    mismatch = post(gateway, "usage/oneshot", other_project)
    assert mismatch.status_code == 400
    assert "['proj_id']" in mismatch.json()["message"]
    as_longrun = post(gateway, "usage/longrun", longrun_usage(funded, job_id, "started"))
    assert as_longrun.status_code == 400
    assert "service_type" in as_longrun.json()["message"]
    assert Job.objects.get(uuid=job_id).started_at is None


def test_usage_for_a_released_reservation_is_a_409(gateway, funded):
    job_id = reserve(gateway, funded)
    gateway.delete(f"/api/accounting/reservation/oneshot/{job_id}")
    response = post(gateway, "usage/oneshot", oneshot_usage(funded, job_id))
    assert response.status_code == 409
    assert response.json()["error_code"] == "JOB_ALREADY_CANCELLED"
    assert balance(funded.alpha) == (D("400"), 0)


def test_the_outsider_cannot_post_usage_for_another_labs_jobs(gateway, funded, token_client):
    job_id = reserve(gateway, funded)
    outsider = token_client(["accounting"], lab=funded.charlie_lab)
    response = post(outsider, "usage/oneshot", oneshot_usage(funded, job_id))
    assert response.status_code == 404
    own_project = project_create(lab=funded.charlie_lab, name="mine")
    disguised = oneshot_usage(funded, job_id, proj_id=str(own_project.uuid))
    response = post(outsider, "usage/oneshot", disguised)
    assert response.status_code == 404  # alice's job is not among the ones it may see
    assert Job.objects.get(uuid=job_id).closed_at is None
    assert balance(funded.alpha) == (D("390"), D("10"))


def test_usage_needs_the_accounting_scope(token_client, funded):
    client = token_client(["usage"])
    response = post(client, "usage/oneshot", oneshot_usage(funded, str(uuid.uuid4())))
    assert response.status_code == 403
