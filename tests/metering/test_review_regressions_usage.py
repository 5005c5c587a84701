"""Regressions found in review (usage events, settlement): each test failed before its fix."""

from decimal import Decimal

import pytest

from accounts.services import service_token_create
from billing import services as billing
from billing.models import EntryType, JournalLine
from core.money import MAX_CREDITS
from metering import usage
from metering.cost import Tier
from metering.ingestion import usage_events_ingest
from metering.models import Job, ServiceType
from metering.settlement import usage_events_settle
from tests.metering.test_reservations import priced_service
from tests.metering.test_usage import at
from tests.metering.test_usage_events_api import event, service_priced

D = Decimal
GB = 1024**3


# 6. Two storage events in the same second (an upload, then its deletion): the `0` event is
#    taken for a replay of an earlier closing event, so the 10 GB interval stays open and is
#    billed until the project's next event.


@pytest.mark.django_db
def test_storage_zero_in_the_same_second_closes_the_open_interval(cast, clock):
    storage = priced_service(
        "storage", ServiceType.STORAGE, [Tier(0, None, D(0), D("0.000000000000000001"))]
    )
    billing.budget_grant(project=cast.alpha, amount="400")
    usage.storage_event_record(project=cast.alpha, service=storage, size=5 * GB, at=at(0))
    usage.storage_event_record(project=cast.alpha, service=storage, size=10 * GB, at=at(100))
    usage.storage_event_record(project=cast.alpha, service=storage, size=0, at=at(100))
    still_open = Job.objects.filter(
        project=cast.alpha, kind=ServiceType.STORAGE, finished_at__isnull=True
    )
    assert list(still_open.values_list("usage_params", flat=True)) == []


# 2b. The storage usage route accepts any size; the project's next event then fails on a
#     NUMERIC overflow: a 500, not a 4xx.


@pytest.mark.django_db
def test_storage_route_never_answers_500_for_a_huge_size(cast, clock, token_client):
    priced_service("storage", ServiceType.STORAGE, [Tier(0, None, D(0), D("0.000000001"))])
    billing.budget_grant(project=cast.alpha, amount="400")
    gateway = token_client(["accounting"])

    def post(size, seconds):
        return gateway.post(
            "/api/accounting/usage/storage",
            {
                "type": "storage",
                "subtype": "storage",
                "proj_id": str(cast.alpha.uuid),
                "size": size,
                "timestamp": int(at(seconds).timestamp()),
            },
            format="json",
        )

    first = post(10**30, 0)
    assert first.status_code in (201, 400, 422)
    clock.move_to(at(3600))
    assert post(1, 3600).status_code < 500


# 7. Ingestion caps one event's cost below 10^12, but settlement charges the SUM of a batch's
#    events per project and service as one amount: a single ledger line far above the
#    "one amount is at most 10^12 credits" bound (and, summed, a path to overflowing the
#    NUMERIC(24,6) system account, which would stop every charge).


@pytest.mark.django_db
def test_settlement_charges_no_amount_above_max_credits(cast, clock):
    service_priced("ml-llm", tiers=[Tier(0, None, D(0), D("600000"))])  # 6e11 per 10^6 units
    billing.budget_grant(project=cast.alpha, amount="100")
    token, _plain = service_token_create(name="gw", scopes=["usage"])
    result = usage_events_ingest(
        token=token,
        events=[event(cast.alpha, f"big-{i}", units=1_000_000) for i in range(3)],
    )
    assert result.accepted == 3  # each costs 6 x 10^11 < 10^12: accepted
    usage_events_settle()
    biggest = max(
        abs(line.amount) for line in JournalLine.objects.filter(entry__type=EntryType.CHARGE)
    )
    assert biggest < MAX_CREDITS


# 8. A lone surrogate in an enum field (type, subtype, status) or in an unknown field's NAME:
#    the 422 body echoes it ('"\ud800" is not a valid choice.') and rendering that body raises
#    UnicodeEncodeError: a 500 instead of the 422.


@pytest.mark.django_db
@pytest.mark.parametrize(
    "route, changes",
    [
        ("oneshot", {"subtype": "\ud800"}),
        ("longrun", {"status": "\ud800"}),
        ("storage", {"type": "\ud800"}),
        ("oneshot", {"\ud800": 1}),
    ],
)
def test_lone_surrogates_are_a_422_not_a_500(cast, token_client, route, changes):
    import json
    import time
    import uuid

    gateway = token_client(["accounting"])
    gateway.raise_request_exception = False
    body = {
        "type": route,
        "subtype": {"oneshot": "ml-llm", "longrun": "single-cell-sim"}.get(route, "storage"),
        "proj_id": str(cast.alpha.uuid),
        "timestamp": int(time.time()),
        **({"job_id": str(uuid.uuid4())} if route != "storage" else {"size": 1}),
        **({"count": 1} if route == "oneshot" else {}),
        **({"status": "started"} if route == "longrun" else {}),
    }
    body.update(changes)
    answer = gateway.generic(
        "POST", f"/api/accounting/usage/{route}", json.dumps(body), content_type="application/json"
    )
    assert answer.status_code == 422


# 9. /api/v1/usage/events: an ISO timestamp with a UTC offset Python accepts but PostgreSQL
#    does not (beyond +-15:59, e.g. +20:00) is written as-is (`isoformat()` keeps the offset):
#    the INSERT fails and the whole batch is a 500 instead of one event's outcome.


@pytest.mark.django_db
def test_ingest_timestamp_with_a_large_offset_is_not_a_500(cast, token_client):
    from datetime import timedelta, timezone

    from django.utils import timezone as dj_timezone

    service_priced("ml-llm")
    billing.budget_grant(project=cast.alpha, amount="100")
    client = token_client(["usage"])
    client.raise_request_exception = False
    moment = (dj_timezone.now() - timedelta(minutes=1)).astimezone(timezone(timedelta(hours=20)))
    good = event(cast.alpha, "ok-1", timestamp=int(dj_timezone.now().timestamp()) - 60)
    odd = event(cast.alpha, "odd-1", timestamp=moment.isoformat())  # e.g. ...T08:00:00+20:00
    answer = client.post("/api/v1/usage/events", {"events": [good, odd]}, format="json")
    assert answer.status_code == 200
    assert answer.json()["results"][0]["status"] == "accepted"
