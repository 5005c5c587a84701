"""Usage and charging, with the ledger's exact amounts: the reference's worked numbers and its
charging table, plus the fixes of its flaws. Time is frozen and moved, never slept."""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.db.models import Sum

from accounts.services import lab_create, project_create
from billing import services as billing
from billing.audit import ledger_audit
from billing.errors import InsufficientFundsError
from billing.models import EntryType, JournalEntry, JournalLine
from billing.selectors import job_held, project_balances
from metering import charging, usage
from metering.cost import Tier
from metering.errors import (
    JobAlreadyFinishedError,
    JobCancelledError,
    StorageOutOfOrderError,
    UsageError,
)
from metering.models import Job, ServiceType
from metering.reservations import reservation_create, reservation_release
from tests.metering.test_reservations import priced_service

D = Decimal
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SIM_TIERS = [Tier(0, None, D("1.5"), D("0.01"))]  # the reference's single-cell-sim test price


def at(seconds):
    return T0 + timedelta(seconds=seconds)


def budget(project):
    return project_balances([project])[0]


def reserve_longrun(cast, sim, instances=1, duration=0):
    return reservation_create(
        project=cast.alpha,
        service=sim,
        quantity=instances * duration,
        params={"instances": instances, "duration": duration},
    )


def event(job, status, seconds, instances=None, **kwargs):
    return usage.longrun_event_record(
        job_uuid=job.uuid,
        project=job.project,
        subtype="single-cell-sim",
        status=status,
        at=at(seconds),
        instances=instances,
        **kwargs,
    )


def charge_at(clock, job, seconds):
    clock.move_to(at(seconds))
    return charging.longrun_charge(job=job)


def job_lines(job, account_type):
    """(entry type, amount) of each of the job's entries on accounts of that type."""
    rows = (
        JournalLine.objects.filter(entry__job_uuid=job.uuid, account__type=account_type)
        .values_list("entry_id", "entry__type")
        .annotate(total=Sum("amount"))
    )
    return sorted((kind, total) for _, kind, total in rows)


# Oneshot ---------------------------------------------------------------------------------------


@pytest.fixture
def llm(clock, cast):
    service = priced_service()  # ml-llm, 0.00001 per token
    billing.budget_grant(project=cast.alpha, amount="400")
    return service


def oneshot(job, count, **kwargs):
    return usage.oneshot_usage_record(
        job_uuid=job.uuid, project=job.project, subtype="ml-llm", count=count, at=T0, **kwargs
    )


@pytest.mark.django_db
def test_oneshot_usage_above_the_reservation_takes_the_rest_from_the_project(cast, llm):
    job = reservation_create(project=cast.alpha, service=llm, quantity=1000, params={"count": 1000})
    job = oneshot(job, 1500, name="answer")
    assert job.charged_amount == D("0.015") and job.closed_at is not None
    assert (job.started_at, job.finished_at, job.name) == (T0, T0, "answer")
    assert job_lines(job, "sys") == [("charge", D("0.015"))]
    assert job_held(job_uuid=job.uuid) == 0
    assert (budget(cast.alpha).balance, budget(cast.alpha).reserved) == (D("399.985"), 0)


@pytest.mark.django_db
def test_oneshot_usage_below_the_reservation_releases_the_rest(cast, llm):
    job = reservation_create(project=cast.alpha, service=llm, quantity=10**6, params={})
    assert budget(cast.alpha).reserved == D("10")
    job = oneshot(job, 250_000)
    assert job.charged_amount == D("2.5")
    assert job_lines(job, "rsv") == [
        ("charge", D("-2.5")),
        ("release", D("-7.5")),
        ("reserve", D("10")),
    ]
    assert (budget(cast.alpha).balance, budget(cast.alpha).reserved) == (D("397.5"), 0)


@pytest.mark.django_db
def test_the_same_oneshot_usage_again_is_a_no_op_and_different_usage_a_conflict(cast, llm):
    job = reservation_create(project=cast.alpha, service=llm, quantity=1000, params={})
    oneshot(job, 1000)
    entries = JournalEntry.objects.count()
    oneshot(job, 1000)
    assert JournalEntry.objects.count() == entries
    with pytest.raises(JobAlreadyFinishedError):
        oneshot(job, 2000)
    assert JournalEntry.objects.count() == entries


@pytest.mark.django_db
def test_usage_for_a_released_job_is_refused(cast, llm):
    job = reservation_create(project=cast.alpha, service=llm, quantity=1000, params={})
    reservation_release(job=job)
    with pytest.raises(JobCancelledError):
        oneshot(job, 1000)
    assert budget(cast.alpha).balance == D("400")


@pytest.mark.django_db
def test_usage_that_does_not_match_its_job_is_refused(cast, llm, sim):
    job = reservation_create(project=cast.alpha, service=llm, quantity=1000, params={})
    with pytest.raises(UsageError, match="service_subtype"):
        usage.oneshot_usage_record(
            job_uuid=job.uuid, project=cast.alpha, subtype="single-cell-sim", count=1, at=T0
        )
    with pytest.raises(UsageError, match="proj_id"):
        usage.oneshot_usage_record(
            job_uuid=job.uuid, project=cast.beta, subtype="ml-llm", count=1, at=T0
        )
    longrun = reserve_longrun(cast, sim)
    with pytest.raises(UsageError, match="service_type"):
        usage.oneshot_usage_record(
            job_uuid=longrun.uuid, project=cast.alpha, subtype="single-cell-sim", count=1, at=T0
        )


@pytest.mark.django_db
def test_overshoot_puts_the_project_in_debt_and_blocks_new_holds(cast, clock):
    llm = priced_service()
    billing.budget_grant(project=cast.alpha, amount="10")
    job = reservation_create(project=cast.alpha, service=llm, quantity=10**6, params={})
    oneshot(job, 3 * 10**6)  # costs 30: 10 held, 20 beyond the budget
    state = budget(cast.alpha)
    assert (state.balance, state.spendable, state.reserved) == (D("-20"), D("-20"), 0)
    with pytest.raises(InsufficientFundsError):
        reservation_create(project=cast.alpha, service=llm, quantity=1, params={})
    billing.lab_top_up(lab=cast.lab, amount="25")
    billing.budget_assign(lab=cast.lab, project=cast.alpha, amount="25")
    assert budget(cast.alpha).spendable == D("5")
    reservation_create(project=cast.alpha, service=llm, quantity=5 * 10**5, params={})
    assert budget(cast.alpha).balance == 0


@pytest.mark.django_db(transaction=True)
def test_the_same_usage_posted_twenty_times_at_once_is_charged_once():
    with time_machine.travel(T0, tick=False):
        lab = lab_create(name="race")
        project = project_create(lab=lab, name="p")
        llm = priced_service()
        billing.budget_grant(project=project, amount="100")
        job = reservation_create(project=project, service=llm, quantity=10**6, params={})
    barrier = threading.Barrier(20)
    errors = []

    def post():
        try:
            barrier.wait()
            usage.oneshot_usage_record(
                job_uuid=job.uuid, project=project, subtype="ml-llm", count=2 * 10**6, at=T0
            )
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert JournalEntry.objects.filter(job_uuid=job.uuid, type=EntryType.CHARGE).count() == 1
    assert (budget(project).balance, budget(project).reserved) == (D("80"), 0)
    assert ledger_audit() == []


# Long-running: the reference's numbers -------------------------------------------------------


@pytest.mark.django_db
def test_reference_end_to_end_two_instances_finished_past_the_estimate(cast, sim, clock):
    job = reserve_longrun(cast, sim, instances=2, duration=600)
    assert job.reserved_amount == D("13.5")
    event(job, "started", 0, instances=2)
    event(job, "running", 60)
    clock.move_to(at(1200))
    job = event(job, "finished", 1200)
    # 2 x 1200 s x 0.01 + 1.5: 13.50 from the hold, 12.00 from the project, nothing released
    assert job.charged_amount == D("25.5") and job.closed_at is not None
    assert sorted(job_lines(job, "rsv")) == [("charge", D("-13.5")), ("reserve", D("13.5"))]
    assert sorted(job_lines(job, "proj")) == [("charge", D("-12")), ("reserve", D("-13.5"))]
    assert (budget(cast.alpha).balance, budget(cast.alpha).reserved) == (D("374.5"), 0)


@pytest.mark.django_db
def test_increments_add_up_to_the_full_cost(cast, sim, clock):
    job = reserve_longrun(cast, sim)
    event(job, "started", 0, instances=1)
    assert charge_at(clock, job, 30) == 0  # under the minimum interval
    assert charge_at(clock, job, 300) == D("4.5")  # 300 x 0.01 + the fixed 1.5
    event(job, "running", 330)
    assert charge_at(clock, job, 360) == D("0.6")
    clock.move_to(at(600))
    job = event(job, "finished", 600)
    assert job.charged_amount == D("7.5") == D("4.5") + D("0.6") + D("2.4")
    assert [amount for kind, amount in job_lines(job, "sys")] == [D("0.6"), D("2.4"), D("4.5")]
    assert charging.longrun_charge(job=job) == 0  # closed


@pytest.mark.django_db
def test_increments_of_a_tiered_price_add_up_exactly(cast, clock):
    tiers = [Tier(0, 100, D("2.0"), D("0.1")), Tier(100, None, D(0), D("0.05"))]
    service = priced_service("notebook", ServiceType.LONGRUN, tiers)
    billing.budget_grant(project=cast.alpha, amount="400")
    job = reserve_longrun(cast, service)
    usage.longrun_event_record(
        job_uuid=job.uuid,
        project=cast.alpha,
        subtype="notebook",
        status="started",
        at=T0,
        instances=1,
    )
    charged = [charge_at(clock, job, s) for s in (60, 130)]
    clock.move_to(at(200))
    job = usage.longrun_event_record(
        job_uuid=job.uuid, project=cast.alpha, subtype="notebook", status="finished", at=at(200)
    )
    assert charged == [D("8.0"), D("5.5")]  # the reference's worked increments
    assert job.charged_amount == D("17.0")


@pytest.mark.django_db
def test_a_job_without_heartbeats_expires_charged_up_to_its_expiry(cast, sim, clock, settings):
    settings.LONGRUN_EXPIRY_SECONDS = 3600
    job = reserve_longrun(cast, sim, instances=1, duration=600)  # holds 7.5
    event(job, "started", 0, instances=1)
    assert charge_at(clock, job, 3600) == D("37.5")  # still alive: charged up to now
    clock.move_to(at(3661))
    assert charging.longrun_charge(job=job) == 0  # expired at 3600, already charged that far
    job.refresh_from_db()
    assert job.expired_at == job.finished_at == job.last_charged_at == at(3600)
    assert job.closed_at == at(3661) and job.charged_amount == D("37.5")
    assert job_held(job_uuid=job.uuid) == 0


@pytest.mark.django_db
def test_a_job_never_charged_expires_charged_from_its_start(cast, sim, clock):
    job = reserve_longrun(cast, sim, instances=1, duration=600)
    event(job, "started", 0, instances=1)
    event(job, "running", 400)
    assert charge_at(clock, job, 4001) == D("41.5")  # 4000 s (400 + the hour) x 0.01 + 1.5
    job.refresh_from_db()
    assert job.expired_at == job.finished_at == at(4000)
    assert (budget(cast.alpha).balance, budget(cast.alpha).reserved) == (D("358.5"), 0)


@pytest.mark.django_db
def test_a_late_finished_earlier_than_the_last_charge_refunds_and_closes(cast, sim, clock):
    job = reserve_longrun(cast, sim, instances=1, duration=3600)  # holds 37.5
    event(job, "started", 0, instances=1)
    assert charge_at(clock, job, 600) == D("7.5")
    job = event(job, "finished", 300)  # it really finished at 300
    assert job.charged_amount == D("4.5") and job.closed_at is not None
    assert job.finished_at == job.last_charged_at == at(300)
    assert job_held(job_uuid=job.uuid) == 0
    assert (budget(cast.alpha).balance, budget(cast.alpha).reserved) == (D("395.5"), 0)


@pytest.mark.django_db
def test_a_finished_after_expiry_refunds_what_ran_past_the_finish(cast, sim, clock):
    job = reserve_longrun(cast, sim)
    event(job, "started", 0, instances=1)
    charge_at(clock, job, 3700)  # expires at 3600, charged 37.5
    job = event(job, "finished", 1000)
    assert job.charged_amount == D("11.5") and job.finished_at == at(1000)
    job = event(job, "finished", 1000)  # the same again: nothing moves
    assert job.charged_amount == D("11.5")


@pytest.mark.django_db
def test_a_finished_without_started_is_billed_from_the_reservation(cast, sim, clock):
    job = reserve_longrun(cast, sim, instances=2, duration=600)  # reserved at T0
    clock.move_to(at(100))
    job = event(job, "finished", 100)
    assert job.started_at == T0 and job.usage_params["instances"] == 2
    assert job.charged_amount == D("3.5")  # 2 x 100 s x 0.01 + 1.5
    assert (budget(cast.alpha).balance, budget(cast.alpha).reserved) == (D("396.5"), 0)


@pytest.mark.django_db
def test_repeated_started_and_late_heartbeats_change_nothing(cast, sim, clock):
    job = reserve_longrun(cast, sim)
    event(job, "started", 0, instances=1)
    job = event(job, "started", 50, instances=3)
    assert job.started_at == T0 and job.usage_params["instances"] == 1
    clock.move_to(at(100))
    event(job, "finished", 100)
    job = event(job, "running", 90)
    assert job.charged_amount == D("2.5")
    with pytest.raises(JobAlreadyFinishedError):
        event(job, "finished", 120)


@pytest.mark.django_db
def test_longrun_usage_for_a_cancelled_job_is_refused(cast, sim):
    job = reserve_longrun(cast, sim, instances=1, duration=60)
    reservation_release(job=job)
    with pytest.raises(JobCancelledError):
        event(job, "started", 0, instances=1)


@pytest.mark.django_db
def test_a_job_cannot_finish_before_it_started(cast, sim):
    job = reserve_longrun(cast, sim)
    event(job, "started", 100, instances=1)
    with pytest.raises(UsageError):
        event(job, "finished", 50)


# Storage ---------------------------------------------------------------------------------------

GB = 1024**3
PER_BYTE_SECOND = D("0.000000000000001")  # 1e-15 credits per byte-second


def store(cast, service, size, seconds):
    return usage.storage_event_record(
        project=cast.alpha, service=service, size=size, at=at(seconds)
    )


@pytest.mark.django_db
def test_storage_is_charged_per_interval_and_closed_by_the_next_event(
    cast, storage, clock, settings
):
    settings.STORAGE_MIN_CHARGE_INTERVAL_SECONDS = 3600
    first = store(cast, storage, 10 * GB, 0)
    clock.move_to(at(1800))
    assert charging.storage_charge(job=first) == 0  # under the minimum interval
    clock.move_to(at(3600))
    hour = D(10 * GB * 3600) * PER_BYTE_SECOND  # 0.038654705664
    assert charging.storage_charge(job=first) == D("0.038655")
    clock.move_to(at(5400))
    second = store(cast, storage, 20 * GB, 5400)
    first.refresh_from_db()
    assert first.finished_at == at(5400) and first.closed_at is not None
    assert first.charged_amount == D("0.038655") + D("0.019327")  # + half an hour
    assert hour / 2 == D("0.019327352832")
    clock.move_to(at(9000))
    assert charging.storage_charge(job=second) == D("0.077309")
    store(cast, storage, 0, 9000)  # the project holds nothing from then on
    assert Job.objects.filter(kind=ServiceType.STORAGE, closed_at__isnull=True).count() == 0
    assert budget(cast.alpha).balance == D("400") - D("0.038655") - D("0.019327") - D("0.077309")


@pytest.mark.django_db
def test_storage_events_repeat_as_no_ops_and_refuse_the_past(cast, storage, clock):
    first = store(cast, storage, GB, 0)
    assert store(cast, storage, GB, 0) == first
    clock.move_to(at(100))
    store(cast, storage, 2 * GB, 100)
    assert store(cast, storage, GB, 0) == first  # an older event resent: still a no-op
    with pytest.raises(StorageOutOfOrderError):
        store(cast, storage, 3 * GB, 50)
    assert Job.objects.filter(kind=ServiceType.STORAGE).count() == 2
