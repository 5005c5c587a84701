"""POST /api/v1/usage: settling an authorized job with its actual units."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import Scope
from billing.selectors import project_balances
from keys.caps import key_jobs_release
from keys.models import ApiKey, KeyJob
from metering.models import Job
from metering.reservations import reservation_release
from tests.keys.conftest import authorize

pytestmark = pytest.mark.django_db


def settle(client, job_id, units):
    return client.post("/api/v1/usage", {"job_id": job_id, "units": units}, format="json")


def balance(project):
    row = project_balances([project])[0]
    return row.balance, row.reserved


def test_usage_charges_the_actual_units_and_releases_the_rest(cast, gateway, make_key):
    _, full = make_key()
    job_id = authorize(gateway, full, units=500).json()["job_id"]
    assert balance(cast.alpha) == (Decimal("95"), Decimal("5"))
    response = settle(gateway, job_id, 120)
    assert response.status_code == 200, response.json()
    assert response.json() == {
        "job_id": job_id,
        "units": 120,
        "charged": "1.200000",
        "reserved": "5.000000",
    }
    assert balance(cast.alpha) == (Decimal("98.8"), Decimal("0"))
    key_job = KeyJob.objects.get(job__uuid=job_id)
    assert (key_job.units, key_job.charged) == (120, Decimal("1.2"))


def test_usage_above_the_estimate_charges_the_project_for_the_excess(cast, gateway, make_key):
    _, full = make_key()
    job_id = authorize(gateway, full, units=100).json()["job_id"]
    assert settle(gateway, job_id, 300).json()["charged"] == "3.000000"
    assert balance(cast.alpha) == (Decimal("97"), Decimal("0"))


def test_the_same_usage_again_is_a_no_op_and_other_units_are_409(cast, gateway, make_key):
    _, full = make_key()
    job_id = authorize(gateway, full, units=100).json()["job_id"]
    first = settle(gateway, job_id, 50)
    again = settle(gateway, job_id, 50)
    assert again.status_code == 200 and again.json() == first.json()
    assert balance(cast.alpha) == (Decimal("99.5"), Decimal("0"))
    conflict = settle(gateway, job_id, 51)
    assert (conflict.status_code, conflict.json()["error_code"]) == (409, "JOB_ALREADY_FINISHED")
    assert balance(cast.alpha) == (Decimal("99.5"), Decimal("0"))


def test_the_cap_counts_the_charge_instead_of_the_estimate(gateway, make_key):
    key, full = make_key(credit_limit="10")
    job_id = authorize(gateway, full, units=500).json()["job_id"]
    assert ApiKey.objects.get(pk=key.pk).credit_used == Decimal("5")
    settle(gateway, job_id, 100)
    assert ApiKey.objects.get(pk=key.pk).credit_used == Decimal("1")
    # The cap freed by the correction is usable at once.
    assert authorize(gateway, full, units=900).status_code == 200


def test_the_unit_window_counts_the_actual_units(
    gateway, make_key, django_capture_on_commit_callbacks
):
    _, full = make_key(limits={"ml-llm": {"units_per_minute": 100}})
    job_id = authorize(gateway, full, units=80).json()["job_id"]
    assert authorize(gateway, full, units=30).status_code == 429
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        settle(gateway, job_id, 10)
    assert len(callbacks) == 1
    response = authorize(gateway, full, units=30)
    assert response.status_code == 200
    assert response.json()["limits"]["units"]["remaining"] == 60


def test_a_released_reservation_gives_back_its_cap_hold(gateway, make_key):
    key, full = make_key(credit_limit="10")
    job_id = authorize(gateway, full, units=500).json()["job_id"]
    reservation_release(job=Job.objects.get(uuid=job_id))
    assert key_jobs_release() == 1
    assert key_jobs_release() == 0
    assert ApiKey.objects.get(pk=key.pk).credit_used == Decimal("0")
    assert settle(gateway, job_id, 10).status_code == 409  # the job was cancelled


@pytest.mark.parametrize(
    "body",
    [
        {"units": 1},
        {"job_id": "not-a-uuid", "units": 1},
        {"job_id": "00000000-0000-0000-0000-000000000000", "units": -1},
        {"job_id": "00000000-0000-0000-0000-000000000000", "units": "x"},
        {"job_id": "00000000-0000-0000-0000-000000000000", "units": 1, "extra": True},
    ],
)
def test_bad_usage_is_400(gateway, body):
    response = gateway.post("/api/v1/usage", body, format="json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_REQUEST"


def test_an_unknown_job_is_404(gateway):
    response = settle(gateway, "00000000-0000-0000-0000-000000000000", 1)
    assert response.status_code == 404


def test_a_job_not_opened_by_authorize_is_404(cast, gateway, llm):
    from metering.reservations import reservation_create

    job = reservation_create(project=cast.alpha, service=llm, quantity=10, params={"count": 10})
    assert settle(gateway, str(job.uuid), 10).status_code == 404


def test_the_outsider_cannot_settle_another_labs_job(cast, gateway, make_key, token_client):
    _, full = make_key()
    job_id = authorize(gateway, full, units=100).json()["job_id"]
    outsider = token_client([Scope.USAGE], lab=cast.charlie_lab)
    assert settle(outsider, job_id, 1).status_code == 404
    assert balance(cast.alpha) == (Decimal("99"), Decimal("1"))


def test_usage_needs_the_usage_scope(gateway, make_key, token_client):
    _, full = make_key()
    job_id = authorize(gateway, full, units=100).json()["job_id"]
    assert settle(token_client([Scope.AUTHORIZE]), job_id, 1).status_code == 403
