"""The lab's usage page: what its projects used and spent, from the rollups the worker builds
out of real charges; members see it, outsiders get 404. Its CSV downloads: every job closed in
the window and the window's sums, streamed, with names that cannot run as spreadsheet formulas.
Operators read a lab's calendar month from the same rollups at /api/admin/labs/{id}/usage/."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from accounts.models import Scope
from accounts.services import project_create
from billing import services as billing
from core.csv_download import csv_cell
from metering import charging, usage
from metering.models import ServiceType
from metering.reservations import reservation_create
from metering.rollups import usage_rollup
from metering.usage_summary import lab_usage, usage_window
from tests.metering.test_reservations import priced_service
from tests.metering.test_usage import SIM_TIERS, T0, at

pytestmark = pytest.mark.django_db
D = Decimal


def oneshot(project, service, count, *, name=""):
    job = reservation_create(project=project, service=service, quantity=count, params={})
    usage.oneshot_usage_record(
        job_uuid=job.uuid, project=project, subtype=service.slug, count=count, at=T0, name=name
    )
    return job


@pytest.fixture
def used(cast):
    """In Alice Lab's Alpha: two LLM calls (0.01 + 0.03) and a simulation that runs from T0 to
    3,900 s on 2 instances (1.5 + 78 = 79.5); in Charlie's lab: one LLM call. Rolled up."""
    with time_machine.travel(T0, tick=False) as clock:
        llm = priced_service()
        sim = priced_service("single-cell-sim", ServiceType.LONGRUN, SIM_TIERS)
        llm.unit_label = "token"
        llm.save()
        billing.budget_grant(project=cast.alpha, amount="1000")
        oneshot(cast.alpha, llm, 1000, name="first call")
        oneshot(cast.alpha, llm, 3000, name="second call")
        run = reservation_create(project=cast.alpha, service=sim, quantity=0, params={})
        usage.longrun_event_record(
            job_uuid=run.uuid, project=cast.alpha, subtype="single-cell-sim", status="started",
            at=T0, instances=2,
        )  # fmt: skip
        charging.longrun_charge(job=run, now=at(1800))
        clock.move_to(at(3900))
        usage.longrun_event_record(
            job_uuid=run.uuid, project=cast.alpha, subtype="single-cell-sim", status="finished",
            at=at(3900),
        )  # fmt: skip
        charlies = project_create(lab=cast.charlie_lab, name="Charlie's project")
        billing.budget_grant(project=charlies, amount="10")
        oneshot(charlies, llm, 7000, name="charlie's call")
        assert usage_rollup() > 0
    return llm, sim


def test_a_labs_usage_sums_its_charges_and_jobs_by_service_and_project(cast, used):
    llm, sim = used
    now = at(7200)
    summary = lab_usage(lab=cast.lab, window=usage_window("24h", now))
    assert (summary.credits, summary.jobs) == (D("79.54"), 3)
    assert [(row.service, row.credits, row.units, row.jobs) for row in summary.by_service] == [
        (sim, D("79.5"), 7800, 1),
        (llm, D("0.04"), 4000, 2),
    ]
    assert [row.units_text for row in summary.by_service] == ["7,800 units", "4,000 tokens"]
    alpha = next(row for row in summary.by_project if row.project == cast.alpha)
    assert alpha.credits == D("79.54")
    assert [row.service for row in alpha.services] == [sim, llm]
    # 24 hourly bars; T0's hour has 0.04 + 37.5 (the first charge), the next 42: the highest.
    assert len(summary.bars) == 24
    heights = {bar.start: (bar.credits, bar.percent) for bar in summary.bars if bar.credits}
    assert heights == {T0: (D("37.54"), 89), T0 + timedelta(hours=1): (D("42"), 100)}
    assert [(row.job.name, row.charged) for row in summary.recent_jobs] == [
        ("", "79.50"),  # closed last
        ("first call", "0.01"),
        ("second call", "0.03"),
    ]

    daily = lab_usage(lab=cast.lab, window=usage_window("30d", now))
    assert daily.credits == D("79.54") and len(daily.bars) == 30
    assert [bar.percent for bar in daily.bars if bar.credits] == [100]
    month = lab_usage(lab=cast.lab, window=usage_window("month", now))
    assert month.window.start == T0.replace(day=1, hour=0) and month.credits == D("79.54")
    later = lab_usage(lab=cast.lab, window=usage_window("24h", at(3 * 86400)))
    assert later.credits == 0 and later.by_service == []


def test_members_see_the_page_and_outsiders_get_404(client, cast, used):
    url = f"/app/labs/{cast.lab.uuid}/usage/"
    with time_machine.travel(at(7200), tick=False):
        client.force_login(cast.bob)  # a member, not an admin
        page = client.get(url + "?window=24h").content.decode()
        assert 'data-testid="usage-credits">79.54<' in page
        assert "4,000 tokens" in page and "7,800 units" in page
        assert 'aria-current="page" class="contrast" data-window="24h"' in page
        assert "second call" in page and "charlie&#x27;s call" not in page
        assert f'href="{url}jobs.csv?window=24h"' in page
        assert f'href="{url}summary.csv?window=24h"' in page
        assert client.get(url + "?window=nonsense").status_code == 200  # the default window
        client.force_login(cast.charlie)
        assert client.get(url).status_code == 404
        own = client.get(f"/app/labs/{cast.charlie_lab.uuid}/usage/").content.decode()
        assert 'data-testid="usage-credits">0.07<' in own and "second call" not in own
    client.logout()
    assert client.get(url)["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_members_see_their_labs_discount_and_outsiders_do_not(client, cast):
    from metering.models import Discount

    Discount.objects.create(
        lab=cast.lab,
        discount=Decimal("0.2"),
        valid_from=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
        valid_to=datetime(2031, 1, 1, tzinfo=UTC),
    )
    client.force_login(cast.bob)
    page = client.get(f"/app/labs/{cast.lab.uuid}/usage/").content.decode()
    assert "Alice Lab pays 20% less than" in page
    assert "since 2 Jan 2026, 03:04 UTC and until 1 Jan 2031, 00:00 UTC" in page
    client.force_login(cast.charlie)
    own = client.get(f"/app/labs/{cast.charlie_lab.uuid}/usage/").content.decode()
    assert 'data-testid="discount"' not in own


def test_the_lab_and_dashboard_pages_link_to_it(client, cast):
    client.force_login(cast.alice)
    url = f"/app/labs/{cast.lab.uuid}/usage/"
    assert f'href="{url}"' in client.get(f"/app/labs/{cast.lab.uuid}/").content.decode()
    assert f'href="{url}"' in client.get("/app/").content.decode()


def test_operators_see_revenue_and_usage_in_the_admin(client, cast, used):
    from accounts.services import user_create

    operator = user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)
    client.force_login(operator)
    page = client.get("/admin/metering/usagerollup/").content.decode()
    totals = page.split('data-testid="rollup-totals">')[1].split("</p>")[0]
    # Daily rows: Alice Lab's 79.54 and Charlie's 0.07; not doubled by the hourly rows.
    assert "79.61 credits charged" in totals and "4 jobs finished" in totals
    assert "2 labs" in totals
    hourly = client.get("/admin/metering/usagerollup/?period__exact=hour").content.decode()
    assert "79.61 credits charged" in hourly.split('data-testid="rollup-totals">')[1]
    alice = client.get(f"/admin/metering/usagerollup/?q={cast.lab.uuid}").content.decode()
    assert "79.54 credits charged" in alice.split('data-testid="rollup-totals">')[1]
    assert "1 lab." in alice
    client.force_login(cast.alice)  # not staff
    assert client.get("/admin/metering/usagerollup/").status_code == 302


# CSV downloads ---------------------------------------------------------------------------------


def download(client, lab, table, window="24h"):
    response = client.get(f"/app/labs/{lab.uuid}/usage/{table}.csv?window={window}")
    assert response.status_code == 200, response
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith(f'attachment; filename="usage-{table}-')
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_the_jobs_download_lists_every_job_closed_in_the_window(client, cast, used):
    with time_machine.travel(at(7200), tick=False):
        client.force_login(cast.bob)  # a member, not an admin
        rows = download(client, cast.lab, "jobs")
    assert [
        (row["name"], row["service"], row["type"], row["units"], row["credits"], row["outcome"])
        for row in rows
    ] == [
        ("first call", "ml-llm", "oneshot", "1000", "0.01", "finished"),
        ("second call", "ml-llm", "oneshot", "3000", "0.03", "finished"),
        ("", "single-cell-sim", "longrun", "7800", "79.5", "finished"),  # 2 instances, 3,900 s
    ]
    sim = rows[2]
    assert (sim["started_at"], sim["finished_at"]) == (
        "2026-11-20T12:00:00Z",
        "2026-11-20T13:05:00Z",
    )
    assert {row["project_id"] for row in rows} == {str(cast.alpha.uuid)}
    assert rows[0]["unit"] == "token"
    # The page's total, to the millionth.
    assert sum(Decimal(row["credits"]) for row in rows) == Decimal("79.54")


def test_the_summary_download_is_the_pages_sums(client, cast, used):
    with time_machine.travel(at(7200), tick=False):
        client.force_login(cast.alice)
        hourly = download(client, cast.lab, "summary")
        daily = download(client, cast.lab, "summary", window="30d")
    assert [
        (r["period_start"], r["service"], r["credits"], r["units"], r["jobs_closed"])
        for r in hourly
    ] == [
        ("2026-11-20T12:00:00Z", "ml-llm", "0.04", "4000", "2"),
        ("2026-11-20T12:00:00Z", "single-cell-sim", "37.5", "0", "0"),
        ("2026-11-20T13:00:00Z", "single-cell-sim", "42", "7800", "1"),
    ]
    assert {row["period"] for row in hourly} == {"hour"}
    assert [(r["period_start"], r["service"], r["credits"]) for r in daily] == [
        ("2026-11-20T00:00:00Z", "ml-llm", "0.04"),
        ("2026-11-20T00:00:00Z", "single-cell-sim", "79.5"),
    ]


def test_outsiders_get_404_and_an_unknown_table_is_404(client, cast, used):
    client.force_login(cast.charlie)
    for table in ("jobs", "summary"):
        assert client.get(f"/app/labs/{cast.lab.uuid}/usage/{table}.csv").status_code == 404
    with time_machine.travel(at(7200), tick=False):
        own = download(client, cast.charlie_lab, "jobs")
    assert [row["name"] for row in own] == ["charlie's call"]  # nothing of Alice Lab's
    client.force_login(cast.alice)
    assert client.get(f"/app/labs/{cast.lab.uuid}/usage/ledger.csv").status_code == 404
    client.logout()
    response = client.get(f"/app/labs/{cast.lab.uuid}/usage/jobs.csv")
    assert response["Location"].startswith("/accounts/login/")


def test_names_that_look_like_formulas_stay_text(client, cast, used):
    llm, _ = used
    with time_machine.travel(T0, tick=False):
        hostile = project_create(lab=cast.lab, name='=HYPERLINK("http://evil","x")')
        billing.budget_grant(project=hostile, amount="1")
        oneshot(hostile, llm, 1000, name="@SUM(A1:A9)")
    with time_machine.travel(at(7200), tick=False):
        client.force_login(cast.alice)
        rows = download(client, cast.lab, "jobs")
    mine = next(row for row in rows if row["project_id"] == str(hostile.uuid))
    assert mine["project"] == '\'=HYPERLINK("http://evil","x")'
    assert mine["name"] == "'@SUM(A1:A9)"


def test_cells_are_plain_numbers_and_iso_times():
    from datetime import UTC, datetime

    assert csv_cell(Decimal("0E-12")) == "0"
    assert csv_cell(Decimal("-0.500000")) == "-0.5"  # a refund stays a number
    assert csv_cell(Decimal("1E+2")) == "100"
    assert csv_cell(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"
    assert csv_cell(None) == ""
    assert csv_cell("-1+1") == "'-1+1"
    assert csv_cell("plain") == "plain"


def test_a_window_with_more_jobs_than_one_download_holds_is_refused_not_cut(
    client, cast, used, monkeypatch
):
    monkeypatch.setattr("metering.usage_views.MAX_JOBS", 2)
    url = f"/app/labs/{cast.lab.uuid}/usage/"
    with time_machine.travel(at(7200), tick=False):
        client.force_login(cast.alice)
        response = client.get(f"{url}jobs.csv?window=24h")
        assert response.status_code == 302 and response["Location"] == f"{url}?window=24h"
        page = client.get(response["Location"]).content.decode()
        assert "Last 24 hours has 3 jobs, more than one download holds (2)" in page
        assert len(download(client, cast.lab, "summary")) == 3  # the totals still download


def test_the_download_is_sent_in_chunks_as_it_is_read(client, cast, used, monkeypatch):
    monkeypatch.setattr("core.csv_download.ROWS_PER_CHUNK", 2)
    with time_machine.travel(at(7200), tick=False):
        client.force_login(cast.alice)
        response = client.get(f"/app/labs/{cast.lab.uuid}/usage/jobs.csv?window=24h")
        chunks = [chunk.decode() for chunk in response.streaming_content]
    assert [chunk.count("\n") for chunk in chunks] == [3, 1]  # header + 2 rows, then 1 row


@pytest.fixture
def operator(token_client):
    return token_client([Scope.PLANS])


def test_a_labs_month_of_usage_per_service_project_and_day(cast, used, operator):
    _, sim = used  # in November 2026, in Alice's lab: 0.04 of ml-llm and 79.5 of the sim
    response = operator.get(f"/api/admin/labs/{cast.lab.uuid}/usage/2026/11")
    body = response.json()
    assert response.status_code == 200, body
    assert (body["lab"], body["year"], body["month"]) == (str(cast.lab.uuid), 2026, 11)
    assert (body["credits"], body["jobs"]) == ("79.540000", 3)
    assert body["services"] == [
        {"service": "single-cell-sim", "unit": sim.unit_label, "units": "7800", "jobs": 1,
         "credits": "79.500000"},
        {"service": "ml-llm", "unit": "token", "units": "4000", "jobs": 2,
         "credits": "0.040000"},
    ]  # fmt: skip
    alpha = next(row for row in body["projects"] if row["project"] == str(cast.alpha.uuid))
    assert alpha["credits"] == "79.540000"
    assert len(body["days"]) == 30 and body["days"][19] == {
        "date": "2026-11-20", "credits": "79.540000"
    }  # fmt: skip
    assert sum(Decimal(day["credits"]) for day in body["days"]) == Decimal("79.54")
    # Charlie's lab used ml-llm the same day; none of it is in Alice's, and another month is empty.
    december = operator.get(f"/api/admin/labs/{cast.lab.uuid}/usage/2026/12").json()
    assert (december["credits"], december["services"], len(december["days"])) == (
        "0.000000", [], 31
    )  # fmt: skip


@pytest.mark.parametrize("path", ["2026/13", "2026/0", "1999/1", "9999/12", "99999999999999/1"])
def test_a_month_that_is_not_one_is_400(cast, operator, path):
    response = operator.get(f"/api/admin/labs/{cast.lab.uuid}/usage/{path}")
    assert (response.status_code, response.json()["error_code"]) == (400, "INVALID_REQUEST")
