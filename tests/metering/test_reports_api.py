"""/api/accounting/report/... and /api/accounting/job/longrun/open: the reference's pages,
items and errors, scoped to what the calling token may see."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.errors import LabNotFoundError, ProjectNotFoundError
from accounts.services import project_create, service_token_create
from billing import services as billing
from billing.charges import usage_charge
from billing.selectors import project_balances
from metering.cost import Tier
from metering.models import Job, ServiceType
from metering.reports import job_report_page
from metering.reservations import reservation_create, reservation_release
from tests.metering.test_reservations import priced_service

D = Decimal
USER = uuid.uuid4()
GROUP = uuid.uuid4()
BASE = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
API = "/api/accounting"
HOST = "http://testserver"


def at(minutes):
    return BASE + timedelta(minutes=minutes)


def iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def gateway(token_client, db):
    return token_client(["accounting"])


@pytest.fixture
def services(cast):
    """The reference's test prices: ml-llm at 0.00001 a token, single-cell-sim at 1.5 + 0.01
    an instance-second, storage at 1e-9 a byte-second; 400 credits on each of alice's
    projects."""
    found = {
        "llm": priced_service(),
        "sim": priced_service(
            "single-cell-sim", ServiceType.LONGRUN, [Tier(0, None, D("1.5"), D("0.01"))]
        ),
        "notebook": priced_service(
            "notebook", ServiceType.LONGRUN, [Tier(0, None, D(0), D("0.001"))]
        ),
        "storage": priced_service(
            "storage", ServiceType.STORAGE, [Tier(0, None, D(0), D("0.000000001"))]
        ),
    }
    billing.budget_grant(project=cast.alpha, amount="400")
    billing.budget_grant(project=cast.beta, amount="400")
    return found


def close(job, amount, *, started, finished, usage, **fields):
    """Charge `amount` for the job (its hold first, the rest released) and record it closed, as
    the usage services do at the end of a job."""
    usage_charge(project=job.project, amount=amount, job_uuid=job.uuid, release_rest=True)
    Job.objects.filter(pk=job.pk).update(
        usage_params=usage,
        started_at=started,
        finished_at=finished,
        last_alive_at=finished,
        last_charged_at=finished,
        closed_at=timezone.now(),
        charged_amount=amount,
        **fields,
    )
    job.refresh_from_db()
    return job


def closed_oneshot(project, service, *, started, count=1500, reserved=1000, **who):
    job = reservation_create(
        project=project,
        service=service,
        quantity=reserved,
        params={"count": reserved},
        user_uuid=USER,
        **who,
    )
    return close(
        job,
        D(count) * D("0.00001"),
        started=started,
        finished=started,
        usage={"count": count},
        reserved_at=started - timedelta(minutes=1),
    )


def longrun_reserved(project, service, *, duration=600, instances=2, **who):
    return reservation_create(
        project=project,
        service=service,
        quantity=duration * instances,
        params={"duration": duration, "instances": instances, "instance_type": None},
        user_uuid=USER,
        **who,
    )


def closed_longrun(project, service, *, started, seconds=1200, **fields):
    job = longrun_reserved(project, service)
    return close(
        job,
        D("1.5") + 2 * seconds * D("0.01"),
        started=started,
        finished=started + timedelta(seconds=seconds),
        usage={"instances": 2, "instance_type": None},
        reserved_at=started - timedelta(minutes=1),
        **fields,
    )


def closed_storage(project, service, *, started, seconds=120, size=1000):
    job = Job.objects.create(
        lab=project.lab,
        project=project,
        service=service,
        kind=ServiceType.STORAGE,
        started_at=started,
        last_alive_at=started,
        usage_params={"size": size},
    )
    return close(
        job,
        D(size) * seconds * D("0.000000001"),
        started=started,
        finished=started + timedelta(seconds=seconds),
        usage={"size": size},
    )


def get(client, path, **params):
    return client.get(f"{API}/{path}", params)


# Items -----------------------------------------------------------------------------------------


@pytest.fixture
def three_jobs(cast, services):
    """A oneshot, a longrun and a storage job of Alpha, closed; the oneshot is the newest."""
    return [
        closed_oneshot(cast.alpha, services["llm"], started=at(30), name="q", group_uuid=GROUP),
        closed_longrun(cast.alpha, services["sim"], started=at(20)),
        closed_storage(cast.alpha, services["storage"], started=at(10)),
    ]


def expected_items(jobs):
    oneshot, longrun, storage = jobs
    return [
        {
            "job_id": str(oneshot.uuid),
            "user_id": str(USER),
            "name": "q",
            "group_id": str(GROUP),
            "type": "oneshot",
            "subtype": "ml-llm",
            "reserved_at": iso(at(29)),
            "started_at": iso(at(30)),
            "amount": "0.015000",
            "count": 1500,
            "reserved_amount": "0.010000",
            "reserved_count": 1000,
        },
        {
            # No name and no group: left out, as the reference's exclude-defaults does.
            "job_id": str(longrun.uuid),
            "user_id": str(USER),
            "type": "longrun",
            "subtype": "single-cell-sim",
            "reserved_at": iso(at(19)),
            "started_at": iso(at(20)),
            "finished_at": iso(at(40)),
            "cancelled_at": None,
            "amount": "25.500000",
            "duration": 1200,
            "reserved_amount": "13.500000",
            "reserved_duration": 600,
        },
        {
            "job_id": str(storage.uuid),
            "type": "storage",
            "subtype": "storage",
            "started_at": iso(at(10)),
            "finished_at": iso(at(12)),
            "amount": "0.000120",
            "duration": 120,
            "size": 1000,
        },
    ]


def test_project_report_items_are_exact_and_newest_first(gateway, cast, three_jobs):
    response = get(gateway, f"report/project/{cast.alpha.uuid}")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["message"] == f"Job report for project {cast.alpha.uuid}"
    assert body["data"]["items"] == expected_items(three_jobs)


def test_the_ledger_agrees_with_the_reported_amounts(cast, three_jobs):
    # The jobs were really charged: Alpha lost exactly the reported amounts, holds released.
    spent = D("0.015") + D("25.5") + D("0.00012")
    state = project_balances([cast.alpha])[0]
    assert (state.balance, state.reserved) == (D(400) - spent, D(0))


@pytest.mark.parametrize(
    ("kind", "extra"),
    [("system", {"vlab", "proj"}), ("virtual-lab", {"proj"}), ("project", set())],
)
def test_each_report_adds_its_own_ids(gateway, cast, three_jobs, kind, extra):
    path = {
        "system": "report/system",
        "virtual-lab": f"report/virtual-lab/{cast.lab.uuid}",
        "project": f"report/project/{cast.alpha.uuid}",
    }[kind]
    ids = {}
    if "vlab" in extra:
        ids["vlab_id"] = str(cast.lab.uuid)
    if "proj" in extra:
        ids["proj_id"] = str(cast.alpha.uuid)
    response = get(gateway, path)
    assert response.status_code == 200, response.json()
    assert response.json()["data"]["items"] == [
        {**item, **ids} for item in expected_items(three_jobs)
    ]
    message = {
        "system": "Job report for system",
        "virtual-lab": f"Job report for virtual-lab {cast.lab.uuid}",
        "project": f"Job report for project {cast.alpha.uuid}",
    }[kind]
    assert response.json()["message"] == message


def test_an_expired_longrun_job_reports_its_expiry_as_cancelled_at(gateway, cast, services):
    job = closed_longrun(cast.alpha, services["sim"], started=at(0), seconds=600, expired_at=at(10))
    item = get(gateway, f"report/project/{cast.alpha.uuid}").json()["data"]["items"][0]
    assert item["job_id"] == str(job.uuid)
    assert (item["finished_at"], item["cancelled_at"], item["duration"]) == (
        iso(at(10)),
        iso(at(10)),
        600,
    )


def test_an_empty_name_is_left_out_but_a_name_is_kept(gateway, cast, services):
    closed_oneshot(cast.alpha, services["llm"], started=at(2), name="")
    closed_oneshot(cast.alpha, services["llm"], started=at(1), name="kept")
    items = get(gateway, f"report/project/{cast.alpha.uuid}").json()["data"]["items"]
    assert ["name" in item for item in items] == [False, True]
    assert items[1]["name"] == "kept"
    assert "group_id" not in items[0] and "group_id" not in items[1]


def test_jobs_not_closed_are_left_out(gateway, cast, services):
    closed = closed_oneshot(cast.alpha, services["llm"], started=at(0))
    longrun_reserved(cast.alpha, services["sim"])  # reserved only
    running = longrun_reserved(cast.alpha, services["sim"])
    Job.objects.filter(pk=running.pk).update(started_at=at(5), last_alive_at=at(6))
    finished = longrun_reserved(cast.alpha, services["sim"])  # finished, not charged yet
    Job.objects.filter(pk=finished.pk).update(started_at=at(5), finished_at=at(7))
    reservation_release(job=longrun_reserved(cast.alpha, services["sim"]))  # cancelled
    for path in ("report/system", f"report/virtual-lab/{cast.lab.uuid}"):
        data = get(gateway, path).json()["data"]
        assert [item["job_id"] for item in data["items"]] == [str(closed.uuid)]
        assert data["meta"]["total_items"] == 1


def test_ties_on_started_at_are_ordered_by_id(gateway, cast, services):
    jobs = [closed_oneshot(cast.alpha, services["llm"], started=at(0)) for _ in range(3)]
    jobs.append(closed_oneshot(cast.alpha, services["llm"], started=at(1)))
    items = get(gateway, f"report/project/{cast.alpha.uuid}").json()["data"]["items"]
    expected = [jobs[3], *sorted(jobs[:3], key=lambda job: job.pk)]
    assert [item["job_id"] for item in items] == [str(job.uuid) for job in expected]


def test_reports_of_a_lab_and_a_project_keep_to_them(gateway, cast, services):
    alpha = closed_oneshot(cast.alpha, services["llm"], started=at(0))
    beta = closed_oneshot(cast.beta, services["llm"], started=at(1))
    gamma = project_create(lab=cast.charlie_lab, name="Gamma")
    billing.budget_grant(project=gamma, amount="10")
    other = closed_oneshot(gamma, services["llm"], started=at(2))

    def ids(path):
        return [item["job_id"] for item in get(gateway, path).json()["data"]["items"]]

    assert ids(f"report/project/{cast.alpha.uuid}") == [str(alpha.uuid)]
    assert ids(f"report/virtual-lab/{cast.lab.uuid}") == [str(beta.uuid), str(alpha.uuid)]
    assert ids("report/system") == [str(other.uuid), str(beta.uuid), str(alpha.uuid)]
    system = get(gateway, "report/system").json()["data"]["items"]
    assert system[0]["vlab_id"] == str(cast.charlie_lab.uuid)
    assert system[0]["proj_id"] == str(gamma.uuid)


# Pagination ------------------------------------------------------------------------------------


def test_pagination_meta_and_links_over_several_pages(gateway, cast, services):
    jobs = [closed_oneshot(cast.alpha, services["llm"], started=at(i)) for i in range(5)]
    newest_first = [str(job.uuid) for job in reversed(jobs)]
    url = f"{HOST}{API}/report/project/{cast.alpha.uuid}"

    def page(number):
        response = gateway.get(f"{url}?page_size=2&page={number}")
        assert response.status_code == 200, response.json()
        return response.json()["data"]

    def link(number):
        return f"{url}?page_size=2&page={number}"

    first, second, third, past = page(1), page(2), page(3), page(4)
    assert [item["job_id"] for item in first["items"] + second["items"] + third["items"]] == (
        newest_first
    )
    assert first["meta"] == {"page": 1, "page_size": 2, "total_pages": 3, "total_items": 5}
    assert first["links"] == {
        "self": link(1),
        "prev": None,
        "next": link(2),
        "first": link(1),
        "last": link(3),
    }
    assert second["links"] == {
        "self": link(2),
        "prev": link(1),
        "next": link(3),
        "first": link(1),
        "last": link(3),
    }
    assert len(third["items"]) == 1
    assert third["links"]["next"] is None and third["links"]["prev"] == link(2)
    assert past["items"] == []
    assert past["meta"] == {"page": 4, "page_size": 2, "total_pages": 3, "total_items": 5}
    assert past["links"] == {
        "self": link(4),
        "prev": link(3),
        "next": None,
        "first": link(1),
        "last": link(3),
    }


def test_links_keep_other_parameters_and_put_page_last(gateway, cast, services):
    closed_oneshot(cast.alpha, services["llm"], started=at(0))
    closed_oneshot(cast.alpha, services["llm"], started=at(1))
    url = f"{HOST}{API}/report/project/{cast.alpha.uuid}"
    data = gateway.get(f"{url}?page=1&page_size=1").json()["data"]
    assert data["links"] == {
        "self": f"{url}?page=1&page_size=1",  # the request URL as it came
        "prev": None,
        "next": f"{url}?page_size=1&page=2",
        "first": f"{url}?page_size=1&page=1",
        "last": f"{url}?page_size=1&page=2",
    }


def test_defaults_and_an_empty_report(gateway, cast, services):
    url = f"{HOST}{API}/report/project/{cast.alpha.uuid}"
    data = gateway.get(url).json()["data"]
    assert data == {
        "items": [],
        "meta": {"page": 1, "page_size": 1000, "total_pages": 0, "total_items": 0},
        "links": {
            "self": url,
            "prev": None,
            "next": None,
            "first": f"{url}?page=1",
            "last": f"{url}?page=1",  # page=max(total_pages, 1)
        },
    }


def test_a_page_size_above_1000_is_served_as_1000(gateway, cast, services):
    closed_oneshot(cast.alpha, services["llm"], started=at(0))
    response = get(gateway, "report/system", page_size=5000)
    assert response.status_code == 200
    assert response.json()["data"]["meta"] == {
        "page": 1,
        "page_size": 1000,
        "total_pages": 1,
        "total_items": 1,
    }


def test_a_huge_page_is_past_the_end_not_an_error(gateway, cast, services):
    closed_oneshot(cast.alpha, services["llm"], started=at(0))
    response = get(gateway, "report/system", page=10**30)
    assert response.status_code == 200
    assert response.json()["data"]["items"] == []


def test_a_page_costs_the_same_queries_whatever_its_size(token_client, cast, services):
    def queries():
        client = token_client(["accounting"])  # a fresh token each time: the same auth path
        with CaptureQueriesContext(connection) as captured:
            response = get(client, f"report/virtual-lab/{cast.lab.uuid}")
        assert response.status_code == 200
        return len(captured), len(response.json()["data"]["items"])

    closed_oneshot(cast.alpha, services["llm"], started=at(0))
    one, n_one = queries()
    closed_longrun(cast.alpha, services["sim"], started=at(1))
    closed_storage(cast.beta, services["storage"], started=at(2))
    for i in range(3):
        closed_oneshot(cast.beta, services["llm"], started=at(3 + i))
    many, n_many = queries()
    assert (n_one, n_many) == (1, 6)
    assert many == one


# Errors and access -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("report/virtual-lab/{}", "Virtual lab not found"),
        ("report/project/{}", "Project not found"),
    ],
)
def test_unknown_lab_or_project_is_404(gateway, db, path, message):
    response = get(gateway, path.format(uuid.uuid4()))
    assert response.status_code == 404
    assert response.json() == {
        "error_code": "ENTITY_NOT_FOUND",
        "message": message,
        "details": None,
    }


@pytest.mark.parametrize("path", ["report/virtual-lab/not-a-uuid", "report/project/123"])
def test_a_malformed_uuid_is_422(gateway, db, path):
    response = get(gateway, path)
    assert response.status_code == 422
    body = response.json()
    assert (body["error_code"], body["message"]) == ("INVALID_REQUEST", "Validation error")
    assert body["details"][0]["type"] == "uuid_parsing"


def test_page_abc_is_422_located_in_the_query(gateway, db):
    response = get(gateway, "report/system", page="abc")
    assert response.status_code == 422
    assert response.json() == {
        "error_code": "INVALID_REQUEST",
        "message": "Validation error",
        "details": [
            {
                "type": "int_parsing",
                "loc": ["query", "page"],
                "msg": "Input should be a valid integer, unable to parse string as an integer",
            }
        ],
    }


@pytest.mark.parametrize(
    ("params", "errors"),
    [
        ({"page": "0"}, [("greater_than_equal", "page")]),
        ({"page": "-3"}, [("greater_than_equal", "page")]),
        ({"page": "1.5"}, [("int_parsing", "page")]),
        ({"page": ""}, [("int_parsing", "page")]),
        ({"page_size": "0"}, [("greater_than_equal", "page_size")]),
        ({"page_size": "x"}, [("int_parsing", "page_size")]),
        (
            {"page": "x", "page_size": "0"},
            [("int_parsing", "page"), ("greater_than_equal", "page_size")],
        ),
    ],
)
@pytest.mark.parametrize(
    "path", ["report/system", "report/virtual-lab/{lab}", "report/project/{project}"]
)
def test_bad_page_parameters_are_422(gateway, cast, path, params, errors):
    response = get(gateway, path.format(lab=cast.lab.uuid, project=cast.alpha.uuid), **params)
    assert response.status_code == 422
    details = response.json()["details"]
    assert [(d["type"], d["loc"][1]) for d in details] == errors
    assert all(d["loc"][0] == "query" for d in details)


def test_the_outsiders_lab_token_sees_nothing_of_alice(token_client, cast, services):
    closed_oneshot(cast.alpha, services["llm"], started=at(0))
    alices_open = longrun_reserved(cast.alpha, services["sim"])
    gamma = project_create(lab=cast.charlie_lab, name="Gamma")
    billing.budget_grant(project=gamma, amount="10")
    charlies_open = longrun_reserved(gamma, services["sim"], duration=10, instances=1)
    charlie = token_client(["accounting"], lab=cast.charlie_lab)

    lab = get(charlie, f"report/virtual-lab/{cast.lab.uuid}")
    project = get(charlie, f"report/project/{cast.alpha.uuid}")
    assert (lab.status_code, lab.json()["message"]) == (404, "Virtual lab not found")
    assert (project.status_code, project.json()["message"]) == (404, "Project not found")

    listed = get(charlie, "job/longrun/open").json()["data"]
    assert [item["id"] for item in listed["items"]] == [str(charlies_open.uuid)]
    assert listed["meta"]["total_items"] == 1
    everyone = get(token_client(["accounting"]), "job/longrun/open").json()["data"]["items"]
    assert {item["id"] for item in everyone} == {str(alices_open.uuid), str(charlies_open.uuid)}
    # His own lab's report works.
    assert get(charlie, f"report/virtual-lab/{cast.charlie_lab.uuid}").status_code == 200


def test_a_lab_token_cannot_read_the_system_report(token_client, cast, services):
    closed_oneshot(cast.alpha, services["llm"], started=at(0))
    alices = token_client(["accounting"], lab=cast.lab)
    response = get(alices, "report/system")
    assert response.status_code == 403
    assert response.json()["error_code"] == "FORBIDDEN"
    # Its own lab's reports it can read.
    items = get(alices, f"report/project/{cast.alpha.uuid}").json()["data"]["items"]
    assert len(items) == 1


@pytest.mark.parametrize(
    "path",
    ["report/system", "report/virtual-lab/{lab}", "report/project/{project}", "job/longrun/open"],
)
def test_a_token_without_the_accounting_scope_is_403(token_client, cast, path):
    client = token_client(["usage", "labs"])
    response = get(client, path.format(lab=cast.lab.uuid, project=cast.alpha.uuid))
    assert response.status_code == 403
    assert response.json()["error_code"] == "FORBIDDEN"


# Open long-running jobs ------------------------------------------------------------------------


@pytest.fixture
def open_jobs(cast, services):
    """Open: reserved (alpha, sim), running (beta, sim), reserved (alpha, notebook).
    Not open: finished, cancelled, a oneshot reservation, a closed longrun."""
    reserved = longrun_reserved(cast.alpha, services["sim"])
    running = longrun_reserved(cast.beta, services["sim"])
    Job.objects.filter(pk=running.pk).update(started_at=at(5), last_alive_at=at(9))
    notebook = longrun_reserved(cast.alpha, services["notebook"])
    finished = longrun_reserved(cast.alpha, services["sim"])
    Job.objects.filter(pk=finished.pk).update(started_at=at(5), finished_at=at(7))
    reservation_release(job=longrun_reserved(cast.alpha, services["sim"]))
    reservation_create(
        project=cast.alpha, service=services["llm"], quantity=10, params={"count": 10}
    )
    closed_longrun(cast.alpha, services["sim"], started=at(0))
    # Created in this order, a minute apart.
    for minutes, job in enumerate([reserved, running, notebook]):
        Job.objects.filter(pk=job.pk).update(created_at=at(minutes))
    return [reserved, running, notebook]


def test_open_longrun_jobs_are_exact_and_oldest_first(gateway, cast, open_jobs):
    reserved, running, notebook = open_jobs
    response = get(gateway, "job/longrun/open")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["message"] == "Open longrun jobs"
    assert body["data"]["items"] == [
        {
            "id": str(reserved.uuid),
            "vlab_id": str(cast.lab.uuid),
            "proj_id": str(cast.alpha.uuid),
            "service_subtype": "single-cell-sim",
            "started_at": None,
            "last_alive_at": None,
            "created_at": iso(at(0)),
        },
        {
            "id": str(running.uuid),
            "vlab_id": str(cast.lab.uuid),
            "proj_id": str(cast.beta.uuid),
            "service_subtype": "single-cell-sim",
            "started_at": iso(at(5)),
            "last_alive_at": iso(at(9)),
            "created_at": iso(at(1)),
        },
        {
            "id": str(notebook.uuid),
            "vlab_id": str(cast.lab.uuid),
            "proj_id": str(cast.alpha.uuid),
            "service_subtype": "notebook",
            "started_at": None,
            "last_alive_at": None,
            "created_at": iso(at(2)),
        },
    ]
    assert body["data"]["meta"] == {
        "page": 1,
        "page_size": 1000,
        "total_pages": 1,
        "total_items": 3,
    }


def test_open_longrun_jobs_by_subtype_and_page(gateway, open_jobs):
    reserved, running, notebook = open_jobs

    def ids(**params):
        data = get(gateway, "job/longrun/open", **params).json()["data"]
        return [item["id"] for item in data["items"]], data["meta"]["total_items"]

    assert ids(subtype="notebook") == ([str(notebook.uuid)], 1)
    assert ids(subtype="single-cell-sim") == ([str(reserved.uuid), str(running.uuid)], 2)
    assert ids(subtype="ml-llm") == ([], 0)
    assert ids(page_size=1, page=2) == ([str(running.uuid)], 3)
    links = get(gateway, "job/longrun/open", subtype="notebook", page_size=1).json()["data"]
    assert links["links"]["first"] == (
        f"{HOST}{API}/job/longrun/open?subtype=notebook&page_size=1&page=1"
    )


def test_open_longrun_jobs_refuse_an_unknown_subtype_and_bad_pages(gateway, db):
    response = get(gateway, "job/longrun/open", subtype="nope", page="0")
    assert response.status_code == 422
    details = response.json()["details"]
    assert [(d["type"], d["loc"]) for d in details] == [
        ("enum", ["query", "subtype"]),
        ("greater_than_equal", ["query", "page"]),
    ]


def test_the_selector_refuses_a_lab_or_project_the_actor_cannot_see(cast, services):
    closed_oneshot(cast.alpha, services["llm"], started=at(0))
    charlie, _ = service_token_create(name="c", scopes=["accounting"], lab=cast.charlie_lab)
    with pytest.raises(ProjectNotFoundError):
        job_report_page(actor=charlie, project=cast.alpha, page=1, page_size=10)
    with pytest.raises(LabNotFoundError):
        job_report_page(actor=charlie, lab=cast.lab, page=1, page_size=10)
    assert job_report_page(actor=charlie, page=1, page_size=10).total_items == 0
    anyone, _ = service_token_create(name="g", scopes=["accounting"])
    assert job_report_page(actor=anyone, project=cast.alpha, page=1, page_size=10).total_items == 1
