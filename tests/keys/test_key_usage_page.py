"""A key's usage page: its last 30 UTC days and its services, for members of its lab only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from keys.selectors import key_usage_days
from tests.keys.conftest import authorize

pytestmark = pytest.mark.django_db

JAN_20 = datetime(2027, 1, 20, 12, 0, tzinfo=UTC)  # after the fixtures' grants


def settle(client, job_id, units):
    response = client.post("/api/v1/usage", {"job_id": job_id, "units": units}, format="json")
    assert response.status_code == 200, response.json()


@pytest.fixture
def used(gateway, make_key):
    """Jan 18: two requests, one settled at 100 units (1.00). Jan 19, 23:59: one request,
    settled at 00:01 on Jan 20 with 50 units (0.50). Jan 20: one request, not settled."""
    key, full = make_key()
    with time_machine.travel(JAN_20 - timedelta(days=2), tick=False) as clock:
        settle(gateway, authorize(gateway, full, units=100).json()["job_id"], 100)
        authorize(gateway, full, units=10)
        clock.move_to(datetime(2027, 1, 19, 23, 59, tzinfo=UTC))
        late = authorize(gateway, full, units=80).json()["job_id"]
        clock.move_to(datetime(2027, 1, 20, 0, 1, tzinfo=UTC))
        settle(gateway, late, 50)
        clock.move_to(JAN_20)
        authorize(gateway, full, units=10)
    return key


def test_requests_count_on_their_day_and_charges_on_the_day_they_settled(used):
    days, services = key_usage_days(used, now=JAN_20)
    assert len(days) == 30 and days[-1].day == datetime(2027, 1, 20, tzinfo=UTC)
    busy = {
        day.day.day: (day.requests, day.units, day.charged, day.percent)
        for day in days
        if day.requests or day.units
    }
    assert busy == {
        18: (2, 100, Decimal("1"), 100),
        19: (1, 0, Decimal("0"), 0),
        20: (1, 50, Decimal("0.5"), 50),
    }
    assert [(s.slug, s.requests, s.units, s.charged) for s in services] == [
        ("ml-llm", 4, 150, Decimal("1.5"))
    ]
    later, _ = key_usage_days(used, now=JAN_20 + timedelta(days=29))
    assert sum(day.requests for day in later) == 1  # Jan 18 and 19 left the window


def test_members_see_it_and_outsiders_get_404(client, cast, used):
    url = f"/app/keys/{used.uuid}/usage/"
    with time_machine.travel(JAN_20, tick=False):
        client.force_login(cast.bob)  # a member who did not make the key
        assert f'href="{url}"' in client.get("/app/keys/").content.decode()
        page = client.get(url).content.decode()
        assert 'data-testid="key-requests">4<' in page
        assert 'data-testid="key-units">150 units on ml-llm<' in page  # the fixture's unit
        assert 'data-testid="key-credits">1.50<' in page
        assert '<tr data-day="2027-01-19"><td>2027-01-19</td><td class="num">1</td>' in page
        client.force_login(cast.charlie)
        assert client.get(url).status_code == 404
    client.logout()
    assert client.get(url)["Location"].startswith("/accounts/login/")


def test_the_download_has_a_row_per_day_and_service_for_members_only(client, cast, used):
    url = f"/app/keys/{used.uuid}/usage.csv"
    with time_machine.travel(JAN_20, tick=False):
        client.force_login(cast.bob)
        assert f'href="{url}"' in client.get(f"/app/keys/{used.uuid}/usage/").content.decode()
        response = client.get(url)
        assert response["Content-Type"].startswith("text/csv")
        assert b"".join(response.streaming_content).decode().splitlines() == [
            "day,service,unit,requests,units,credits",
            "2027-01-18,ml-llm,unit,2,100,1",
            "2027-01-19,ml-llm,unit,1,0,0",
            "2027-01-20,ml-llm,unit,1,50,0.5",
        ]
        client.force_login(cast.charlie)
        assert client.get(url).status_code == 404


def test_batch_events_naming_the_key_show_on_its_page(client, cast, make_key, token_client):
    key, _full = make_key()
    other, _ = make_key(project=cast.beta, name="beta key")
    events = [
        {"id": str(n), "project": str(project.uuid), "service": "ml-llm", "units": units,
         "timestamp": int(JAN_20.timestamp()) - 60, "key": ref}
        for n, (project, ref, units) in enumerate([
            (cast.alpha, f"sk_{key.lookup_id}", 1200),  # by its prefix
            (cast.alpha, str(key.uuid), 34),  # by its id
            (cast.alpha, "someone else", 5),  # free text: nobody's
            (cast.beta, f"sk_{key.lookup_id}", 7),  # another project: not this key's
            (cast.alpha, f"sk_{other.lookup_id}", 9),  # the other key, in the wrong project
        ])
    ]  # fmt: skip
    with time_machine.travel(JAN_20, tick=False):
        answer = token_client(["usage"]).post(
            "/api/v1/usage/events", {"events": events}, format="json"
        )
        assert {r["status"] for r in answer.json()["results"]} == {"accepted"}
        client.force_login(cast.bob)
        page = client.get(f"/app/keys/{key.uuid}/usage/").content.decode()
        assert (
            '<tr><td><code>ml-llm</code></td><td class="num">2</td><td class="num">1,234 units</td></tr>'
            in page
        )
        assert (
            'data-testid="key-events"'
            not in client.get(f"/app/keys/{other.uuid}/usage/").content.decode()
        )


def test_batch_events_of_one_slug_sold_as_two_types_stay_apart_in_their_units(
    client, cast, make_key, token_client
):
    from metering.models import Service, UsageEvent
    from tests.metering.test_reservations import priced_service

    key, full = make_key()
    sim = priced_service("ml-llm", kind="longrun")
    Service.objects.filter(pk=sim.pk).update(unit_label="second")
    events = [
        {"id": str(n), "project": str(cast.alpha.uuid), "service": "ml-llm", "type": kind,
         "units": units, "timestamp": int(JAN_20.timestamp()) - 60, "key": ref}
        for n, (kind, units, ref) in enumerate(
            [("oneshot", 1000, str(key.uuid)), ("longrun", 34, full)]  # the whole key: its prefix
        )
    ]  # fmt: skip
    with time_machine.travel(JAN_20, tick=False):
        answer = token_client(["usage"]).post(
            "/api/v1/usage/events", {"events": events}, format="json"
        )
        assert {r["status"] for r in answer.json()["results"]} == {"accepted"}
        assert full not in set(UsageEvent.objects.values_list("key_ref", flat=True))
        client.force_login(cast.alice)
        page = client.get(f"/app/keys/{key.uuid}/usage/").content.decode()
    assert '<td class="num">1,000 units</td>' in page
    assert (
        '<small class="muted">long-running</small>' in page
        and '<td class="num">34 seconds</td>' in page
    )
