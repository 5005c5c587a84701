"""Settlement of batch usage events: the exact summed cost, once per event across reruns,
parallel settlers and crashes; prices and discounts of each event's own time."""

import threading
from datetime import timedelta
from decimal import Decimal

import environ
import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum

from accounts.services import lab_create, project_create, service_token_create
from billing import charges
from billing import services as billing
from billing.models import EntryType, JournalEntry, JournalLine
from billing.selectors import project_balances
from config.schedule import beat_schedule
from metering import selectors, tasks
from metering.cost import Tier
from metering.ingestion import usage_events_ingest
from metering.models import UsageEvent
from metering.price_books import PriceBook
from metering.services import discount_create
from metering.settlement import usage_events_settle
from tests.metering.test_usage_events_api import T0, TWO_TIERS, event, service_priced

D = Decimal
FLAT = [Tier(0, None, D("0.5"), D("0.001"))]  # exact at six places: totals do not depend on batches


def ingest(token, events):
    result = usage_events_ingest(token=token, events=events)
    assert result.rejected == 0, [r for r in result.results if r.reason]
    return result


def balance(project):
    return project_balances([project])[0].balance


def charge_entries():
    return JournalEntry.objects.filter(type=EntryType.CHARGE)


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def gateway(db):
    token, _plain = service_token_create(name="gateway", scopes=["usage"])
    return token


@pytest.mark.django_db
def test_it_charges_the_sum_of_each_events_cost_quantized_once(cast, clock, gateway):
    llm = service_priced("ml-llm", tiers=TWO_TIERS)
    billing.budget_grant(project=cast.alpha, amount="100")
    ingest(gateway, [event(cast.alpha, f"one-{i}", units=1) for i in range(3)])
    ingest(gateway, [event(cast.alpha, "many", units=1500)])
    run = usage_events_settle()
    # Each event pays its own fixed costs: 3 x (0.5 + 0.0000013) = 1.5000039, and 1500 units
    # 0.5 + 1000 x 0.0000013 + 2 + 500 x 0.00000007 = 2.501335. Together 4.0013389, quantized
    # once: 4.001339. (Quantized per event it would be 4.001338; the 1503 units as one usage,
    # 2.501335.)
    assert run.amount == D("4.001339")
    assert (run.events, run.charges, run.units, run.left) == (4, 1, 1503, 0)
    (entry,) = charge_entries()
    assert entry.lines.get(account__type="proj").amount == D("-4.001339")
    assert entry.metadata == {
        "reason": "usage_events", "service": "ml-llm", "service_type": "oneshot", "events": 4,
        "units": 1503,
    }  # fmt: skip
    assert balance(cast.alpha) == D("95.998661")
    assert not UsageEvent.objects.filter(settled_at__isnull=True).exists()
    assert set(UsageEvent.objects.values_list("settled_at", flat=True)) == {T0}
    assert llm.pk == UsageEvent.objects.values_list("service_id", flat=True).first()


@pytest.mark.django_db
def test_each_group_of_project_and_service_is_one_charge(cast, clock, gateway):
    service_priced("ml-llm", tiers=FLAT)
    service_priced("mcp", tiers=[Tier(0, None, D(0), D("0.01"))])
    billing.budget_grant(project=cast.alpha, amount="100")
    billing.budget_grant(project=cast.beta, amount="100")
    ingest(
        gateway,
        [
            event(cast.alpha, "a1", units=100),
            event(cast.alpha, "a2", units=200),
            event(cast.alpha, "a3", service="mcp", units=50),
            event(cast.beta, "b1", units=10),
        ],
    )
    run = usage_events_settle()
    assert (run.events, run.charges) == (4, 3)
    charged = {
        (e.metadata["service"], e.lines.get(account__type="proj").account.project_id): (
            e.lines.get(account__type="proj").amount, e.metadata["events"]
        )
        for e in charge_entries()
    }  # fmt: skip
    assert charged == {
        ("ml-llm", cast.alpha.pk): (D("-1.3"), 2),  # 2 x 0.5 + 0.3
        ("mcp", cast.alpha.pk): (D("-0.5"), 1),
        ("ml-llm", cast.beta.pk): (D("-0.51"), 1),
    }


@pytest.mark.django_db
def test_each_event_is_priced_at_its_own_time_with_its_labs_price_and_discount(
    cast, clock, gateway
):
    llm = service_priced("ml-llm", tiers=[Tier(0, None, D(0), D("1"))], since=T0 - timedelta(40))
    # A new default price from a day ago, Alice Lab's own price from 12 hours ago, and a 25 %
    # discount for Alice Lab from two hours ago.
    service_priced("ml-llm", tiers=[Tier(0, None, D(0), D("2"))], since=T0 - timedelta(1))
    service_priced(
        "ml-llm", tiers=[Tier(0, None, D(0), D("3"))], lab=cast.lab, since=T0 - timedelta(hours=12)
    )
    discount_create(lab=cast.lab, discount=D("0.25"), valid_from=T0 - timedelta(hours=2))
    billing.budget_grant(project=cast.alpha, amount="100")
    moments = {
        "old": T0 - timedelta(days=2),  # 1 per unit
        "default": T0 - timedelta(hours=18),  # 2
        "lab": T0 - timedelta(hours=6),  # 3
        "discounted": T0 - timedelta(hours=1),  # 3 x 0.75
    }
    ingest(
        gateway,
        [
            event(cast.alpha, name, units=10, timestamp=moment.isoformat())
            for name, moment in moments.items()
        ],
    )
    book = PriceBook([llm.pk], [cast.lab.pk])
    for moment in moments.values():  # the same rule as the one-price selector
        assert book.at(llm.pk, cast.lab.pk, moment) == selectors.price_current(
            service=llm, lab=cast.lab, at=moment
        )
    run = usage_events_settle()
    assert run.amount == D("82.5")  # 10 + 20 + 30 + 22.5
    assert balance(cast.alpha) == D("17.5")


@pytest.mark.django_db
def test_settling_twice_charges_once(cast, clock, gateway):
    service_priced("ml-llm", tiers=FLAT)
    billing.budget_grant(project=cast.alpha, amount="100")
    ingest(gateway, [event(cast.alpha, f"e{i}", units=10) for i in range(30)])
    first = usage_events_settle(batch_size=7)
    second = usage_events_settle(batch_size=7)
    assert (first.events, first.batches, first.amount) == (30, 5, D("15.3"))
    assert (second.events, second.charges, second.amount) == (0, 0, 0)
    assert charge_entries().count() == 5  # one per batch of 7 (the last has 2)
    assert balance(cast.alpha) == D("84.7")
    # New events after a settlement are charged by the next one, and only they.
    ingest(gateway, [event(cast.alpha, "late", units=10)])
    assert usage_events_settle().amount == D("0.51")


@pytest.mark.django_db
def test_it_settles_only_events_received_up_to_now(cast, clock, gateway):
    service_priced("ml-llm", tiers=FLAT)
    billing.budget_grant(project=cast.alpha, amount="100")
    ingest(gateway, [event(cast.alpha, "e1", units=10)])
    assert usage_events_settle(now=T0 - timedelta(seconds=1)).events == 0
    assert usage_events_settle(now=T0).events == 1


@pytest.mark.django_db
def test_a_project_that_cannot_be_charged_holds_back_only_its_own_events(
    cast, clock, gateway, caplog
):
    service_priced("ml-llm", tiers=FLAT)
    billing.budget_grant(project=cast.alpha, amount="100")
    broke = project_create(lab=lab_create(name="never funded"), name="broke")
    ingest(gateway, [event(cast.alpha, "alpha", units=10), event(broke, "broke", units=10)])
    run = usage_events_settle()
    assert (run.events, run.left, run.amount) == (1, 1, D("0.51"))
    assert balance(cast.alpha) == D("99.49")
    assert list(UsageEvent.objects.filter(settled_at__isnull=True).values_list("event_id")) == [
        ("broke",)
    ]
    assert "left unsettled" in caplog.text
    billing.budget_grant(project=broke, amount="1")  # once it has credits, the next run charges
    assert usage_events_settle().events == 1
    assert balance(broke) == D("0.49")


@pytest.mark.django_db
def test_a_project_may_go_into_debt_usage_already_happened(cast, clock, gateway):
    service_priced("ml-llm", tiers=FLAT)
    billing.budget_grant(project=cast.alpha, amount="1")
    ingest(gateway, [event(cast.alpha, "e1", units=1000)])
    assert usage_events_settle().amount == D("1.5")
    assert balance(cast.alpha) == D("-0.5")


@pytest.mark.django_db
def test_a_settler_killed_midway_leaves_whole_batches_for_the_next_run(
    cast, clock, gateway, monkeypatch
):
    service_priced("ml-llm", tiers=FLAT)
    billing.budget_grant(project=cast.alpha, amount="100")
    ingest(gateway, [event(cast.alpha, f"e{i}", units=10) for i in range(25)])
    real, calls = charges.usage_charges_post, []

    def dies_on_the_third_batch(**kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is stopped in the middle of a batch
        return real(**kwargs)

    monkeypatch.setattr(charges, "usage_charges_post", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        usage_events_settle(batch_size=10)
    assert UsageEvent.objects.filter(settled_at__isnull=False).count() == 20
    assert balance(cast.alpha) == D("100") - 20 * D("0.51")
    monkeypatch.setattr(charges, "usage_charges_post", real)
    run = usage_events_settle(batch_size=10)
    assert run.events == 5
    assert balance(cast.alpha) == D("100") - 25 * D("0.51")
    assert sum(e.metadata["events"] for e in charge_entries()) == 25


@pytest.mark.django_db(transaction=True)
def test_two_settlers_at_once_charge_each_event_once(cast):
    with time_machine.travel(T0, tick=False):
        service_priced("ml-llm", tiers=FLAT)
        service_priced("mcp", tiers=FLAT)
        projects = [cast.alpha, cast.beta]
        for project in projects:
            billing.budget_grant(project=project, amount="100000")
        token, _ = service_token_create(name="gateway", scopes=["usage"])
        for start in range(0, 2000, 1000):
            ingest(
                token,
                [
                    event(
                        projects[i % 2], f"e{i}", units=i % 97, service=("ml-llm", "mcp")[i % 3 % 2]
                    )
                    for i in range(start, start + 1000)
                ],
            )
        expected = sum(
            (D("0.5") + D("0.001") * u if u else D(0) for u in (i % 97 for i in range(2000))),
            D(0),
        )
        barrier, runs, errors = threading.Barrier(2), [], []

        def settle():
            try:
                barrier.wait()
                runs.append(usage_events_settle(batch_size=50))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=settle) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert sum(run.events for run in runs) == 2000, [run.events for run in runs]
    assert all(run.events for run in runs)  # they did run side by side (about 1000 each)
    assert sum(run.amount for run in runs) == expected
    assert not UsageEvent.objects.filter(settled_at__isnull=True).exists()
    assert sum(e.metadata["events"] for e in charge_entries()) == 2000
    assert sum(e.metadata["units"] for e in charge_entries()) == sum(i % 97 for i in range(2000))
    system = JournalLine.objects.filter(account__type="sys", entry__type=EntryType.CHARGE)
    assert system.aggregate(total=Sum("amount"))["total"] == expected
    assert usage_events_settle().events == 0


@pytest.mark.django_db
def test_the_task_and_the_command_settle(cast, clock, gateway, capsys):
    service_priced("ml-llm", tiers=FLAT)
    billing.budget_grant(project=cast.alpha, amount="100")
    ingest(gateway, [event(cast.alpha, "e1", units=10)])
    call_command("usage_events_settle", "--now", (T0 - timedelta(minutes=1)).isoformat())
    assert "0 event(s) settled" in capsys.readouterr().out
    call_command("usage_events_settle", "--now", "2026-11-20T12:00:00")
    assert "1 event(s) settled in 1 charge(s)" in capsys.readouterr().out
    ingest(gateway, [event(cast.alpha, "e2", units=10)])
    assert tasks.usage_events_settle() == 1
    assert tasks.usage_events_settle.name == "metering.usage_events_settle"
    assert charge_entries().count() == 2


def test_the_settlement_is_scheduled_every_usage_settle_period(monkeypatch):
    entry = beat_schedule(environ.Env())["usage-events-settle"]
    assert entry == {"task": "metering.usage_events_settle", "schedule": 60}
    monkeypatch.setenv("USAGE_SETTLE_PERIOD", "15")
    assert beat_schedule(environ.Env())["usage-events-settle"]["schedule"] == 15
