"""Edge values a fuzzing review found answered with a 500 or a write: each is now a 4xx in the
API's error shape, and nothing is written."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from accounts.models import Scope
from billing import services as billing
from billing.models import JournalEntry
from metering.models import Job, Price, Service
from metering.reservations import reservation_create
from tests.metering.test_reservations import priced_service

pytestmark = pytest.mark.django_db

PRICE = {
    "service_type": "oneshot",
    "service_subtype": "ml-llm",
    "valid_from": "2030-01-01T00:00:00Z",
    "tiers": [{"min_quantity": 0, "fixed_cost": "0", "multiplier": "0.01"}],
}


@pytest.fixture
def accounting(token_client):
    client = token_client([Scope.ACCOUNTING])
    client.raise_request_exception = False
    return client


def rows() -> tuple[int, ...]:
    return tuple(m.objects.count() for m in (Service, Price, Job, JournalEntry))


@pytest.mark.parametrize("field", ["valid_from", "valid_to"])
@pytest.mark.parametrize(
    "moment", ["2024-02-30T00:00:00Z", "2024-01-01T25:00:00Z", "2024-01-01T00:00:00+99:00"]
)
def test_a_date_that_does_not_exist_is_a_422(cast, accounting, field, moment):
    before = rows()
    for path, body in (
        ("price", PRICE),
        ("discount", {"vlab_id": str(cast.lab.uuid), "discount": "0.1"}),
    ):
        sent = {**body, "valid_from": "2030-01-01T00:00:00Z", field: moment}
        response = accounting.post(f"/api/accounting/{path}", sent, format="json")
        assert response.status_code == 422, (path, response.content)
        assert response.json()["error_code"] == "INVALID_REQUEST"
        assert field in response.json()["details"][0]["loc"]
    assert rows() == before


@pytest.mark.parametrize("top", [2**63, 10**30])
def test_a_tier_bound_beyond_a_bigint_is_a_422(accounting, top):
    tiers = [
        {"min_quantity": 0, "max_quantity": top, "fixed_cost": "0", "multiplier": "0.01"},
        {"min_quantity": top, "fixed_cost": "0", "multiplier": "0.01"},
    ]
    before = rows()
    response = accounting.post("/api/accounting/price", {**PRICE, "tiers": tiers}, format="json")
    assert response.status_code == 422
    assert rows() == before


def test_a_refused_price_for_a_new_subtype_leaves_no_service(accounting):
    before = rows()
    tiers = [{"min_quantity": 5, "fixed_cost": "0", "multiplier": "0.01"}]  # must start at 0
    body = {**PRICE, "service_subtype": "mcp", "tiers": tiers}
    response = accounting.post("/api/accounting/price", body, format="json")
    assert response.status_code == 422
    assert rows() == before
    fixed = accounting.post(
        "/api/accounting/price", {**body, "tiers": PRICE["tiers"]}, format="json"
    )
    assert fixed.status_code == 201
    assert Service.objects.filter(slug="mcp").count() == 1


def test_a_usage_count_beyond_a_bigint_is_a_422(cast, accounting):
    llm = priced_service()
    billing.budget_grant(project=cast.alpha, amount="100")
    job = reservation_create(project=cast.alpha, service=llm, quantity=10, params={"count": 10})
    body = {
        "proj_id": str(cast.alpha.uuid),
        "type": "oneshot",
        "subtype": "ml-llm",
        "job_id": str(job.uuid),
        "timestamp": int(time.time()),
    }
    before = rows()
    for count in (2**63, 10**250):
        sent = json.dumps({**body, "count": count})
        response = accounting.generic(
            "POST", "/api/accounting/usage/oneshot", sent, content_type="application/json"
        )
        assert response.status_code == 422, response.content
        assert response.json()["details"][0]["loc"][-1] == "count"
    assert rows() == before


def test_any_count_is_estimated_or_refused_for_funds_as_the_reference_does(cast, accounting):
    """Reservations and estimates take counts of any size, as the accounting-service does:
    a reservation no project can cover is a 402, and an estimate is exact."""
    priced_service()  # 0.00001 a unit
    billing.budget_grant(project=cast.alpha, amount="100")
    body = {"proj_id": str(cast.alpha.uuid), "type": "oneshot", "subtype": "ml-llm"}
    before = rows()
    for count, cost in ((2**63, "92233720368547.76"), (10**250, "1" + "0" * 245 + ".00")):
        sent = json.dumps({**body, "user_id": str(uuid.uuid4()), "count": count})
        reserved = accounting.generic(
            "POST", "/api/accounting/reservation/oneshot", sent, content_type="application/json"
        )
        assert reserved.status_code == 402, reserved.content
        sent = json.dumps({**body, "count": count})
        estimate = accounting.generic(
            "POST", "/api/accounting/estimate/oneshot", sent, content_type="application/json"
        )
        assert estimate.status_code == 200
        assert estimate.json()["data"]["cost"] == cost
    assert rows() == before


def test_a_long_instance_type_is_a_422(cast, accounting):
    body = {
        "proj_id": str(cast.alpha.uuid),
        "user_id": str(uuid.uuid4()),
        "type": "longrun",
        "subtype": "single-cell-sim",
        "instances": 1,
        "duration": 60,
        "instance_type": "x" * 256,
    }
    before = rows()
    response = accounting.post("/api/accounting/reservation/longrun", body, format="json")
    assert response.status_code == 422
    assert response.json()["details"][0]["loc"][-1] == "instance_type"
    assert rows() == before


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
def test_an_event_beyond_the_calendar_in_utc_is_out_of_range(cast, token_client, stamp):
    priced_service()
    client = token_client([Scope.USAGE])
    event = {"id": "e1", "project": str(cast.alpha.uuid), "service": "ml-llm", "units": 1}
    response = client.post(
        "/api/v1/usage/events", {"events": [{**event, "timestamp": stamp}]}, format="json"
    )
    assert response.status_code == 200
    [result] = response.json()["results"]
    assert (result["outcome"], result["reason"]) == ("rejected", "timestamp_out_of_range")


@pytest.mark.parametrize("value", [True, 1, 2**100])
def test_a_uuid_must_be_sent_as_a_string(cast, accounting, value):
    """DRF's UUIDField takes integers: `true` named the UUID 00000000-…-0001."""
    from accounts.models import Lab

    labs = Lab.objects.count()
    body = {"id": value, "name": "By number", "balance": "10"}
    created = accounting.post("/api/accounting/account/virtual-lab", body, format="json")
    assert created.status_code == 422
    assert created.json()["details"][0]["loc"][-1] == "id"
    assert Lab.objects.count() == labs
    body = {"proj_id": value, "type": "oneshot", "subtype": "ml-llm", "count": 1}
    assert (
        accounting.post("/api/accounting/estimate/oneshot", body, format="json").status_code == 422
    )
