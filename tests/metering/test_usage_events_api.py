"""POST /api/v1/usage/events: each event's outcome, duplicates answered with their first outcome,
malformed batches refused whole, the outsider kept out, and one batch from ten threads."""

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import Project
from accounts.services import service_token_create
from billing import services as billing
from billing.models import EntryType, JournalEntry
from metering import ingestion
from metering.cost import Tier
from metering.models import Service, ServiceType, UsageEvent
from metering.reservations import reservation_create
from metering.services import price_create

D = Decimal
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
URL = "/api/v1/usage/events"
# 0.5 once, then 0.0000013 per unit up to 1000; 2 more once above 1000, then 0.00000007 per unit.
TWO_TIERS = [
    Tier(0, 1000, D("0.5"), D("0.0000013")),
    Tier(1000, None, D("2"), D("0.00000007")),
]


def service_priced(slug, kind=ServiceType.ONESHOT, tiers=TWO_TIERS, lab=None, since=None):
    service, _ = Service.objects.get_or_create(
        slug=slug, type=kind, defaults={"name": slug, "unit_label": "token"}
    )
    price_create(service=service, tiers=tiers, valid_from=since or T0 - timedelta(days=60), lab=lab)
    return service


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def world(cast, clock):
    """ml-llm (oneshot, two tiers); `dual` sold as oneshot and longrun; `shared` sold as longrun
    and storage (ambiguous without a type); `pricey` at 1 credit per unit; `unpriced` without a price. Alpha has 1000 credits."""
    llm = service_priced("ml-llm")
    service_priced("dual")
    service_priced("dual", ServiceType.LONGRUN)
    service_priced("shared", ServiceType.LONGRUN)
    service_priced("shared", ServiceType.STORAGE)
    service_priced("pricey", tiers=[Tier(0, None, D(0), D(1))])
    Service.objects.create(slug="unpriced", type="oneshot", name="unpriced", unit_label="x")
    billing.budget_grant(project=cast.alpha, amount="1000")
    return llm


def event(of, event_id="e1", **fields):
    """An event of project `of`; a field given as None is left out."""
    body = {
        "id": event_id,
        "project": str(of.uuid),
        "service": "ml-llm",
        "units": 10,
        "timestamp": int(T0.timestamp()) - 60,
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def post(client, events):
    return client.post(URL, {"events": events}, format="json")


def outcomes(response):
    return {r["id"]: (r["status"], r["outcome"], r["reason"]) for r in response.json()["results"]}


@pytest.fixture
def usage_client(token_client):
    return token_client(["usage"])


@pytest.mark.django_db
def test_it_answers_each_events_outcome_and_records_it(cast, world, usage_client):
    beta_job = reservation_create(project=cast.beta, service=world, quantity=0, params={})
    alpha_job = reservation_create(project=cast.alpha, service=world, quantity=0, params={})
    now = int(T0.timestamp())
    events = [
        event(cast.alpha, "ok", units=1500, key="k_1", job=str(alpha_job.uuid)),
        event(cast.alpha, "iso", timestamp="2026-11-20T11:00:00Z"),
        event(cast.alpha, "naive-iso", timestamp="2026-11-20T11:00:00"),
        event(cast.alpha, "zero", units=0),
        event(cast.alpha, "ok", units=7),  # the same id again in this batch
        event(cast.alpha, "no-project", project=str(uuid.uuid4())),
        event(cast.alpha, "bad-project", project="alpha"),
        event(cast.alpha, "no-service", service="nope"),
        event(cast.alpha, "bad-service", service="ml llm\x00"),
        event(cast.alpha, "bad-type", service="dual", type="batch"),
        event(cast.alpha, "ambiguous", service="shared"),
        event(cast.alpha, "negative", units=-1),
        event(cast.alpha, "fraction", units=D("1.5")),
        event(cast.alpha, "bool", units=True),
        event(cast.alpha, "text-units", units="10"),
        event(cast.alpha, "huge-units", units=2**63),
        event(cast.alpha, "old", timestamp=now - 35 * 86400 - 1),
        event(cast.alpha, "just-in-window", timestamp=now - 35 * 86400 + 1),
        event(cast.alpha, "ahead", timestamp=now + 301),
        event(cast.alpha, "bad-time", timestamp="yesterday"),
        event(cast.alpha, "float-time", timestamp=D("1795420800.5")),
        event(cast.alpha, "overflow-time", timestamp=10**20),
        event(cast.alpha, "other-job", job=str(beta_job.uuid)),
        event(cast.alpha, "no-job", job=str(uuid.uuid4())),
        event(cast.alpha, "bad-job", job="job-1"),
        event(cast.alpha, "long-key", key="k" * 65),
        event(cast.alpha, "nul-key", key="k\x00"),
        event(cast.alpha, "extra", unit=5),
        event(cast.alpha, "unpriced", service="unpriced"),
        event(cast.alpha, "costly", service="pricey", units=10**12),
        event(cast.alpha, "affordable", service="pricey", units=10**12 - 1),
    ]
    response = post(usage_client, events)
    assert response.status_code == 200, response.content
    body = response.json()
    accepted = ("accepted", "accepted", None)
    assert [r["id"] for r in body["results"]] == [e["id"] for e in events]
    assert body["results"][4] == {
        "id": "ok",
        "status": "rejected",
        "outcome": "rejected",
        "reason": "duplicate_id_in_batch",
        "message": "This id appears earlier in the same batch",
    }
    rejected = {r["id"]: r["reason"] for r in body["results"][5:] if r["status"] == "rejected"}
    assert rejected == {
        "no-project": "unknown_project",
        "bad-project": "invalid_project",
        "no-service": "unknown_service",
        "bad-service": "invalid_service",
        "bad-type": "invalid_service",
        "ambiguous": "ambiguous_service",
        "negative": "invalid_units",
        "fraction": "invalid_units",
        "bool": "invalid_units",
        "text-units": "invalid_units",
        "huge-units": "invalid_units",
        "old": "timestamp_out_of_range",
        "ahead": "timestamp_out_of_range",
        "bad-time": "invalid_timestamp",
        "float-time": "invalid_timestamp",
        "overflow-time": "invalid_timestamp",
        "other-job": "job_of_another_project",
        "no-job": "unknown_job",
        "bad-job": "invalid_job",
        "long-key": "invalid_key",
        "nul-key": "invalid_key",
        "extra": "unknown_field",
        "unpriced": "no_price",
        "costly": "cost_too_large",
    }
    answered = [(r["id"], (r["status"], r["outcome"], r["reason"])) for r in body["results"]]
    assert answered[0] == ("ok", accepted)
    for event_id in ["iso", "naive-iso", "zero", "just-in-window", "affordable"]:
        assert outcomes(response)[event_id] == accepted, event_id
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (6, 0, 25)
    stored = {e.event_id: e for e in UsageEvent.objects.all()}
    assert len(stored) == 30  # all but the id repeated within the batch
    ok = stored["ok"]
    assert (ok.project, ok.service, ok.job, ok.key_ref, ok.units, ok.outcome) == (
        cast.alpha, world, alpha_job, "k_1", 1500, "accepted"
    )  # fmt: skip
    assert ok.occurred_at == T0 - timedelta(seconds=60) and ok.received_at == T0
    assert ok.settled_at is None
    assert stored["iso"].occurred_at == stored["naive-iso"].occurred_at == T0 - timedelta(hours=1)
    assert (stored["no-project"].outcome, stored["no-project"].reason) == (
        "rejected", "unknown_project"
    )  # fmt: skip
    assert stored["no-project"].project is None
    assert not JournalEntry.objects.filter(type=EntryType.CHARGE).exists()  # settled later


@pytest.mark.django_db
def test_a_slug_sold_as_several_types_is_the_oneshot_one_unless_the_event_says(
    cast, world, usage_client
):
    response = post(
        usage_client,
        [
            event(cast.alpha, "dual", service="dual"),
            event(cast.alpha, "dual-longrun", service="dual", type="longrun"),
            event(cast.alpha, "shared-storage", service="shared", type="storage"),
            event(cast.alpha, "llm-longrun", type="longrun"),
        ],
    )
    assert response.json()["accepted"] == 3
    assert outcomes(response)["llm-longrun"] == ("rejected", "rejected", "unknown_service")
    kinds = dict(UsageEvent.objects.values_list("event_id", "service__type"))
    assert kinds == {
        "dual": "oneshot", "dual-longrun": "longrun", "shared-storage": "storage",
        "llm-longrun": None,
    }  # fmt: skip


@pytest.mark.django_db
def test_a_resent_event_gets_its_first_outcome_even_a_rejection(cast, world, usage_client):
    first = post(
        usage_client,
        [event(cast.alpha, "a", units=5), event(cast.alpha, "b", units=-5)],
    )
    assert outcomes(first) == {
        "a": ("accepted", "accepted", None),
        "b": ("rejected", "rejected", "invalid_units"),
    }
    # Resent, "b" fixed and "c" new: a and b keep their first answers.
    again = post(
        usage_client,
        [event(cast.alpha, "a", units=5), event(cast.alpha, "b", units=5), event(cast.alpha, "c")],
    )
    assert again.status_code == 200
    assert again.json()["results"][1] == {
        "id": "b",
        "status": "duplicate",
        "outcome": "rejected",
        "reason": "invalid_units",
        "message": ingestion.REASON_MESSAGES["invalid_units"],
    }
    assert outcomes(again) == {
        "a": ("duplicate", "accepted", None),
        "b": ("duplicate", "rejected", "invalid_units"),
        "c": ("accepted", "accepted", None),
    }
    assert (again.json()["accepted"], again.json()["duplicates"]) == (1, 2)
    assert dict(UsageEvent.objects.values_list("event_id", "units")) == {"a": 5, "b": 0, "c": 10}


@pytest.mark.django_db
def test_ids_are_unique_per_token_not_across_tokens(cast, world, token_client):
    first, second = token_client(["usage"]), token_client(["usage"])
    assert post(first, [event(cast.alpha, "same")]).json()["accepted"] == 1
    assert post(second, [event(cast.alpha, "same")]).json()["accepted"] == 1
    assert UsageEvent.objects.filter(event_id="same").count() == 2


@pytest.mark.django_db
def test_a_batch_of_1000_is_accepted_and_1001_is_refused_whole(cast, world, usage_client):
    events = [event(cast.alpha, f"e{i}") for i in range(1001)]
    response = post(usage_client, events)
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_REQUEST"
    assert set(response.json()) == {"error_code", "message", "details"}
    assert not UsageEvent.objects.exists()
    response = post(usage_client, events[:1000])
    assert response.status_code == 200
    assert response.json()["accepted"] == 1000
    assert UsageEvent.objects.count() == 1000


MALFORMED = [
    ("not json", b"{events: [}"),
    ("a bare list", b"[]"),
    ("null", b"null"),
    ("no events", b"{}"),
    ("events not a list", b'{"events": {"id": "x"}}'),
    ("events a string", b'{"events": "x"}'),
    ("an event not an object", b'{"events": [1]}'),
    ("an event without an id", b'{"events": [{"units": 1}]}'),
    ("an id not a string", b'{"events": [{"id": 5}]}'),
    ("an empty id", b'{"events": [{"id": ""}]}'),
    ("a NUL in an id", b'{"events": [{"id": "a\\u0000"}]}'),
    ("a lone surrogate in an id", b'{"events": [{"id": "a\\ud800"}]}'),
    ("an id too long", json.dumps({"events": [{"id": "x" * 256}]}).encode()),
    ("deeply nested", b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("not utf-8", b'{"events": ["\xff"]}'),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("case", "body"), MALFORMED, ids=[c for c, _ in MALFORMED])
def test_a_malformed_body_is_a_400_and_writes_nothing(cast, world, usage_client, case, body):
    response = usage_client.post(URL, body, content_type="application/json")
    assert response.status_code == 400, (case, response.content)
    assert response.json()["error_code"] == "INVALID_REQUEST"
    assert not UsageEvent.objects.exists()


@pytest.mark.django_db
def test_text_postgresql_cannot_store_is_a_rejection_not_a_500(cast, world, usage_client):
    body = json.dumps({"events": [event(cast.alpha, "k", key="KEY")]}).replace("KEY", "k\\ud800")
    response = usage_client.post(URL, body.encode(), content_type="application/json")
    assert response.status_code == 200
    assert outcomes(response) == {"k": ("rejected", "rejected", "invalid_key")}


@pytest.mark.django_db
def test_one_malformed_event_refuses_the_whole_batch(cast, world, usage_client):
    response = post(usage_client, [event(cast.alpha, "good"), {"units": 5}])
    assert response.status_code == 400
    assert response.json()["details"] == {"1": "id must be a string of 1 to 255 characters"}
    assert not UsageEvent.objects.exists()


@pytest.mark.django_db
def test_the_outsider_cannot_post_for_alices_projects(cast, world, token_client):
    from metering.settlement import usage_events_settle

    charlie_project = Project.objects.get(lab=cast.charlie_lab)
    billing.budget_grant(project=charlie_project, amount="10")
    alpha_job = reservation_create(project=cast.alpha, service=world, quantity=0, params={})
    outsider = token_client(["usage"], lab=cast.charlie_lab)
    response = post(
        outsider,
        [
            event(cast.alpha, "alpha"),
            event(cast.beta, "beta"),
            event(charlie_project, "own"),
            event(charlie_project, "alices-job", job=str(alpha_job.uuid)),
        ],
    )
    assert outcomes(response) == {
        "alpha": ("rejected", "rejected", "unknown_project"),
        "beta": ("rejected", "rejected", "unknown_project"),
        "own": ("accepted", "accepted", None),
        "alices-job": ("rejected", "rejected", "unknown_job"),  # not "of another project"
    }
    assert not UsageEvent.objects.filter(project__lab=cast.lab).exists()
    run = usage_events_settle()
    assert run.events == 1
    charged = JournalEntry.objects.filter(type=EntryType.CHARGE)
    assert [e.lines.get(account__type="proj").account.project for e in charged] == [charlie_project]
    # Alice's own lab-bound token may post for Alpha.
    alices = token_client(["usage"], lab=cast.lab)
    assert post(alices, [event(cast.alpha, "alpha")]).json()["accepted"] == 1


@pytest.mark.django_db
def test_a_token_without_the_usage_scope_is_forbidden(cast, world, token_client, api_client):
    response = post(token_client(["accounting", "labs"]), [event(cast.alpha)])
    assert response.status_code == 403
    assert response.json()["error_code"] == "FORBIDDEN"
    response = post(api_client, [event(cast.alpha)])
    assert response.status_code == 401
    api_client.force_login(cast.alice)  # people do not post usage: only tokens authenticate
    assert post(api_client, [event(cast.alpha)]).status_code == 401
    assert not UsageEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_one_batch_from_ten_threads_is_accepted_once_and_charged_once(cast):
    from metering.settlement import usage_events_settle

    with time_machine.travel(T0, tick=False):
        service_priced("ml-llm", tiers=[Tier(0, None, D("0.5"), D("0.001"))])
        billing.budget_grant(project=cast.alpha, amount="1000")
        _token, plain = service_token_create(name="gateway", scopes=["usage"])
        events = [event(cast.alpha, f"e{i}", units=i) for i in range(1, 201)]
        barrier = threading.Barrier(10)
        answers, errors = [], []

        def send():
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {plain}")
            try:
                barrier.wait()
                answers.append(post(client, events))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=send) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(a.status_code for a in answers) == [200] * 10
        counts = sorted((a.json()["accepted"], a.json()["duplicates"]) for a in answers)
        assert counts == [(0, 200)] * 9 + [(200, 0)]
        assert UsageEvent.objects.count() == 200
        run = usage_events_settle()
        assert usage_events_settle().events == 0
    assert (run.events, run.charges) == (200, 1)
    # 200 events of 0.5 + 0.001 x units (1..200): 100 + 0.001 x 20,100
    assert run.amount == D("120.1")
    (entry,) = JournalEntry.objects.filter(type=EntryType.CHARGE)
    assert entry.lines.get(account__type="proj").amount == D("-120.1")
    assert entry.metadata["events"] == 200 and entry.metadata["units"] == 20_100
