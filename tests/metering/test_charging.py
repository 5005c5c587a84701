"""The periodic chargers: exactly once across concurrent runs and crashes, real threads and
the real database, time moved by hand."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.db.models import Count, Sum

from accounts.services import lab_create, project_create
from billing import charges
from billing import services as billing
from billing.audit import ledger_audit
from billing.models import EntryType, JournalEntry, JournalLine
from billing.selectors import project_balances
from metering import charging
from metering.models import Job, ServiceType
from metering.reservations import reservation_create
from tests.metering.test_reservations import priced_service
from tests.metering.test_usage import SIM_TIERS, T0, at

D = Decimal
JOBS = 200


def running_jobs(count, *, hold_seconds=60):
    """`count` long-running jobs of one instance, reserved for `hold_seconds` and started at T0
    (1.5 fixed + 0.01 per second: the hold is 2.1 for a minute)."""
    with time_machine.travel(T0, tick=False):
        lab = lab_create(name="busy")
        projects = [project_create(lab=lab, name=f"p{i}") for i in range(4)]
        sim = priced_service("single-cell-sim", ServiceType.LONGRUN, SIM_TIERS)
        for project in projects:
            billing.budget_grant(project=project, amount="10000")
        jobs = [
            reservation_create(
                project=projects[i % 4],
                service=sim,
                quantity=hold_seconds,
                params={"instances": 1, "duration": hold_seconds},
            )
            for i in range(count)
        ]
    Job.objects.filter(pk__in=[j.pk for j in jobs]).update(
        started_at=T0, last_alive_at=T0, usage_params={"instances": 1}
    )
    return projects


def charges_per_job():
    return dict(
        JournalEntry.objects.filter(type=EntryType.CHARGE)
        .values_list("job_uuid")
        .annotate(n=Count("id"))
    )


def system_total():
    return JournalLine.objects.filter(account__type="sys", entry__type=EntryType.CHARGE).aggregate(
        total=Sum("amount")
    )["total"]


@pytest.mark.django_db(transaction=True)
def test_two_chargers_at_once_charge_each_job_once_per_interval():
    projects = running_jobs(JOBS)
    errors, runs = [], []
    barrier = threading.Barrier(2)

    def charge(moment):
        try:
            barrier.wait()
            runs.append(charging.longrun_jobs_charge(now=moment, batch_size=20))
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    for moment in (at(300), at(360)):  # two intervals, two racing chargers each
        threads = [threading.Thread(target=charge, args=(moment,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert errors == []
    assert sum(run.jobs_charged for run in runs) == 2 * JOBS
    assert set(charges_per_job().values()) == {2}  # every job: once per interval, no more
    # 300 s: 1.5 + 3.00 = 4.50 each; then 60 s more: 0.60 each.
    assert system_total() == JOBS * D("5.1")
    assert Job.objects.filter(charged_amount=D("5.1"), last_charged_at=at(360)).count() == JOBS
    assert sum(b.balance for b in project_balances(projects)) == 4 * D("10000") - JOBS * D("5.1")
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
def test_a_charger_that_dies_midway_leaves_nothing_half_done(monkeypatch):
    running_jobs(JOBS)
    real_post, calls = charges.usage_charges_post, []

    def dies_on_the_third_batch(**kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ConnectionError("worker killed")
        return real_post(**kwargs)

    monkeypatch.setattr(charges, "usage_charges_post", dies_on_the_third_batch)
    with pytest.raises(ConnectionError):
        charging.longrun_jobs_charge(now=at(300), batch_size=50)
    assert len(charges_per_job()) == 100  # two batches committed, the third rolled back
    assert Job.objects.filter(last_charged_at=at(300)).count() == 100
    monkeypatch.setattr(charges, "usage_charges_post", real_post)
    run = charging.longrun_jobs_charge(now=at(300), batch_size=50)
    assert run.jobs_charged == 100  # the rest, and only the rest
    assert set(charges_per_job().values()) == {1} and len(charges_per_job()) == JOBS
    assert system_total() == JOBS * D("4.5")
    assert ledger_audit() == []


@pytest.mark.django_db
def test_a_run_charges_holds_first_then_the_project(cast):
    running_jobs(3, hold_seconds=60)
    charging.longrun_jobs_charge(now=at(300))
    rows = (
        JournalLine.objects.filter(entry__type=EntryType.CHARGE)
        .values_list("account__type")
        .annotate(total=Sum("amount"))
    )
    # Each job held 2.1 (60 s): that is charged from the hold, the other 2.4 from the project.
    assert dict(rows) == {"rsv": D("-6.3"), "proj": D("-7.2"), "sys": D("13.5")}


@pytest.mark.django_db
def test_expired_and_finished_jobs_are_closed_in_the_same_run(cast, settings):
    settings.LONGRUN_EXPIRY_SECONDS = 3600
    running_jobs(2)
    first, second = Job.objects.order_by("pk")
    Job.objects.filter(pk=first.pk).update(finished_at=at(100), last_alive_at=at(100))
    run = charging.longrun_jobs_charge(now=at(3700))
    assert (run.jobs_seen, run.jobs_closed) == (2, 2)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.charged_amount, first.closed_at) == (D("2.5"), at(3700))
    assert (second.charged_amount, second.expired_at) == (D("37.5"), at(3600))
    assert charging.longrun_jobs_charge(now=at(3800)).jobs_seen == 0


@pytest.mark.django_db
def test_storage_charger_bills_open_intervals_across_runs(cast, settings):
    from metering import usage
    from metering.cost import Tier

    settings.STORAGE_MIN_CHARGE_INTERVAL_SECONDS = 3600
    with time_machine.travel(T0, tick=False):
        storage = priced_service(
            "storage", ServiceType.STORAGE, [Tier(0, None, D(0), D("0.000000001"))]
        )
        billing.budget_grant(project=cast.alpha, amount="100000")
        usage.storage_event_record(project=cast.alpha, service=storage, size=1000, at=T0)
    assert charging.storage_jobs_charge(now=at(1800)).jobs_charged == 0  # not an hour yet
    for hours in (1, 2, 3):
        assert charging.storage_jobs_charge(now=T0 + timedelta(hours=hours)).amount == D("0.0036")
    assert charging.storage_jobs_charge(now=at(3 * 3600 + 10)).jobs_charged == 0
    assert Job.objects.get().charged_amount == D("0.0108")


@pytest.mark.django_db
def test_a_job_that_cannot_be_charged_is_skipped_and_the_others_are_charged(cast):
    running_jobs(3)
    penniless = lab_create(name="never had credits")
    project = project_create(lab=penniless, name="p")
    sim = Job.objects.first().service
    with time_machine.travel(T0, tick=False):
        free_hold = reservation_create(project=project, service=sim, quantity=0, params={})
    Job.objects.filter(pk=free_hold.pk).update(
        started_at=T0, last_alive_at=T0, usage_params={"instances": 1}
    )
    run = charging.longrun_jobs_charge(now=at(300))
    assert (run.jobs_charged, run.jobs_failed) == (3, 1)
    free_hold.refresh_from_db()
    assert free_hold.charged_amount == 0 and free_hold.last_charged_at is None
    assert system_total() == 3 * D("4.5")


@pytest.mark.django_db
def test_overshoot_of_a_long_running_job_is_at_most_one_charging_period(cast, clock, settings):
    """The overshoot contract: a running job's project trails its usage by at most one
    period of cost, and once below zero it gets 402 on new reservations."""
    settings.LONGRUN_MIN_CHARGE_INTERVAL_SECONDS = 60
    from billing.errors import InsufficientFundsError
    from metering.cost import usage_cost

    sim = priced_service("single-cell-sim", ServiceType.LONGRUN, SIM_TIERS)
    billing.budget_grant(project=cast.alpha, amount="10")  # 850 s of one instance
    job = reservation_create(project=cast.alpha, service=sim, quantity=600, params={})
    Job.objects.filter(pk=job.pk).update(started_at=T0, usage_params={"instances": 1})
    for minute in range(1, 31):
        Job.objects.filter(pk=job.pk).update(last_alive_at=at(60 * minute))  # heartbeats
        charging.longrun_jobs_charge(now=at(60 * minute))
        used = usage_cost(SIM_TIERS, 0, 60 * minute, D(0))
        state = project_balances([cast.alpha])[0]
        # Charged exactly what it used up to this run, so the most its project can trail its
        # usage is what one period (60 s, 0.60 here) costs until the next run.
        assert state.balance + state.reserved == D("10") - used
        job.refresh_from_db()
        assert (job.charged_amount, job.last_charged_at) == (used, at(60 * minute))
    assert project_balances([cast.alpha])[0].balance == D("10") - D("19.5")  # in debt
    with pytest.raises(InsufficientFundsError):
        reservation_create(project=cast.alpha, service=sim, quantity=1, params={})
