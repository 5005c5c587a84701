"""Usage rollups: hourly and daily sums rebuilt from the journal, jobs and batch events."""

import contextlib
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine

from accounts.services import service_token_create
from billing import services as billing
from metering import charging, usage
from metering.models import RollupPeriod, ServiceType, UsageEvent, UsageRollup
from metering.reservations import reservation_create
from metering.rollups import usage_rollup
from metering.settlement import usage_events_settle
from tests.metering.test_reservations import priced_service
from tests.metering.test_usage import SIM_TIERS, T0, at

D = Decimal


def rollups(period):
    return {
        (row.period_start, row.project_id, row.service.slug if row.service else None): (
            row.amount,
            row.charges,
            row.jobs_closed,
            row.units,
        )
        for row in UsageRollup.objects.filter(period=period).select_related("service")
    }


@pytest.mark.django_db
def test_rollups_sum_charges_jobs_and_events_by_hour_and_day(cast):
    with time_machine.travel(T0, tick=False) as clock:
        llm = priced_service()
        sim = priced_service("single-cell-sim", ServiceType.LONGRUN, SIM_TIERS)
        billing.budget_grant(project=cast.alpha, amount="1000")
        for count in (1000, 3000):  # two oneshot jobs in the first hour: 0.01 + 0.03
            job = reservation_create(project=cast.alpha, service=llm, quantity=count, params={})
            usage.oneshot_usage_record(
                job_uuid=job.uuid, project=cast.alpha, subtype="ml-llm", count=count, at=T0
            )
        run = reservation_create(project=cast.alpha, service=sim, quantity=0, params={})
        usage.longrun_event_record(
            job_uuid=run.uuid, project=cast.alpha, subtype="single-cell-sim", status="started",
            at=T0, instances=2,
        )  # fmt: skip
        charging.longrun_charge(job=run, now=at(1800))  # 1.5 + 2 x 1800 x 0.01 = 37.5
        clock.move_to(at(3900))  # the next hour: it finishes at 3900 s, 42 more
        usage.longrun_event_record(
            job_uuid=run.uuid, project=cast.alpha, subtype="single-cell-sim", status="finished",
            at=at(3900),
        )  # fmt: skip
        token, _ = service_token_create(name="gw", scopes=["usage"])
        UsageEvent.objects.create(
            token=token, event_id="e1", project=cast.alpha, service=llm, units=500,
            occurred_at=at(3800), outcome="accepted",
        )  # fmt: skip
        assert usage_events_settle().events == 1  # 500 tokens: 0.005, charged at 3900 s
        assert usage_rollup() > 0
        first = rollups(RollupPeriod.HOUR)
        assert usage_rollup() > 0  # a second run rebuilds the same rows
        assert rollups(RollupPeriod.HOUR) == first
    hour0, hour1 = T0, T0 + timedelta(hours=1)
    alpha = cast.alpha.pk
    assert first == {
        (hour0, alpha, "ml-llm"): (D("0.04"), 2, 2, 4000),
        (hour0, alpha, "single-cell-sim"): (D("37.5"), 1, 0, 0),
        (hour1, alpha, "single-cell-sim"): (D("42"), 1, 1, 2 * 3900),
        (hour1, alpha, "ml-llm"): (D("0.005"), 1, 0, 500),
    }
    assert rollups(RollupPeriod.DAY) == {
        (T0.replace(hour=0), alpha, "ml-llm"): (D("0.045"), 3, 2, 4500),
        (T0.replace(hour=0), alpha, "single-cell-sim"): (D("79.5"), 2, 1, 7800),
    }


@pytest.mark.django_db
def test_after_a_worker_outage_the_next_run_builds_the_hours_it_missed(
    cast, django_capture_on_commit_callbacks
):
    def call(count):
        job = reservation_create(project=cast.alpha, service=llm, quantity=count, params={})
        usage.oneshot_usage_record(
            job_uuid=job.uuid, project=cast.alpha, subtype="ml-llm", count=count, at=T0
        )

    with time_machine.travel(T0, tick=False) as clock:
        llm = priced_service()
        billing.budget_grant(project=cast.alpha, amount="1000")
        call(1000)
        with django_capture_on_commit_callbacks(execute=True):  # where it stopped, once committed
            usage_rollup()
        clock.move_to(at(5400))  # the worker is down from here: 1.5 h later, a call
        call(2000)
        clock.move_to(at(6 * 3600))  # 6 h later it runs again, far past its 2-h lookback
        usage_rollup()
    hourly = rollups(RollupPeriod.HOUR)
    assert hourly[(T0 + timedelta(hours=1), cast.alpha.pk, "ml-llm")] == (D("0.02"), 1, 1, 2000)
    assert rollups(RollupPeriod.DAY)[(T0.replace(hour=0), cast.alpha.pk, "ml-llm")][0] == D("0.03")


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_do_not_collide(cast, monkeypatch):
    """An overlapping beat or a second worker: the run that finds another building skips."""
    import threading

    from metering import rollups
    from tests.billing.test_concurrency import run_threads

    llm = priced_service()
    billing.budget_grant(project=cast.alpha, amount="10")
    job = reservation_create(project=cast.alpha, service=llm, quantity=1000, params={})
    usage.oneshot_usage_record(
        job_uuid=job.uuid, project=cast.alpha, subtype=llm.slug, count=1000, at=job.reserved_at
    )
    both_reading = threading.Barrier(2, timeout=3)
    hourly = rollups._hourly

    def slow(*args):
        sums = hourly(*args)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_reading.wait()  # the skipping run never gets here: the barrier times out
        return sums

    monkeypatch.setattr(rollups, "_hourly", slow)
    written = []
    assert run_threads(2, lambda _: written.append(usage_rollup())) == []
    assert sorted(written)[0] == 0 and sorted(written)[1] > 0
    assert UsageRollup.objects.filter(period=RollupPeriod.HOUR).count() == 1
