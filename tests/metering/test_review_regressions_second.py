"""Regressions found in the second review (metering): each test failed before its fix."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine

from billing import services as billing
from billing.audit import ledger_audit
from metering import charging, services, usage
from metering.cost import Tier
from metering.errors import StorageOutOfOrderError
from metering.models import RollupPeriod, ServiceType, UsageRollup
from metering.reservations import reservation_create
from metering.rollups import usage_rollup
from tests.metering.test_reservations import priced_service
from tests.metering.test_usage import (
    GB,
    PER_BYTE_SECOND,
    SIM_TIERS,
    T0,
    at,
    budget,
    charge_at,
    event,
    reserve_longrun,
    store,
)

D = Decimal


# Longrun: a late finish refunds, at today's discount, seconds charged at yesterday's.


@pytest.mark.django_db
def test_late_finish_refunds_at_the_discount_it_was_charged(cast, sim, clock):
    job = reserve_longrun(cast, sim, instances=1, duration=0)
    event(job, "started", 0, instances=1)
    assert charge_at(clock, job, 600) == D("7.5")  # 1.5 + 600 s x 0.01, no discount
    services.discount_create(lab=cast.lab, discount=D("0.5"), valid_from=at(700))
    clock.move_to(at(800))
    event(job, "finished", 300)  # it finished at 300 s; the news came late
    job.refresh_from_db()
    assert ledger_audit() == []
    # 300 s were used, all before the discount began: 1.5 + 3 = 4.5 (found: 6.0, the 300 s
    # never used were charged at 0% and refunded at 50%)
    assert job.charged_amount == D("4.5")
    assert budget(cast.alpha).balance == D("400") - D("4.5")


# Storage: charged at the price of the charge, refunded at the price of the (earlier) end.


@pytest.mark.django_db
def test_storage_refund_after_a_price_change(cast, storage, clock, settings):
    settings.STORAGE_MIN_CHARGE_INTERVAL_SECONDS = 3600
    size = 10**12  # at 1e-15 per byte-second: 0.001 credit a second
    first = store(cast, storage, size, 0)
    services.price_create(
        service=storage, tiers=[Tier(0, None, D(0), 2 * PER_BYTE_SECOND)], valid_from=at(1800)
    )
    clock.move_to(at(3600))
    assert charging.storage_charge(job=first) == D("7.2")  # 3600 s at the price now: 0.002/s
    store(cast, storage, 0, 900)  # late: the project held nothing from 900 s on
    first.refresh_from_db()
    assert ledger_audit() == []
    # 900 s held: 0.9 at the old price, 1.8 at the charge's; found 4.5 (7.2 - 2700 s x 0.001)
    assert first.charged_amount in (D("0.9"), D("1.8"))


# Refund of a job whose overdraft sits on a grant voided since: the debt is not cancelled.


@pytest.mark.django_db
def test_refund_cancels_a_debt_on_a_voided_grant(cast, clock):
    sim = priced_service("single-cell-sim", ServiceType.LONGRUN, SIM_TIERS)
    grant = billing.budget_grant(project=cast.alpha, amount="10")
    job = reserve_longrun(cast, sim, instances=1, duration=0)
    event(job, "started", 0, instances=1)
    event(job, "running", 1200)
    assert charge_at(clock, job, 1200) == D("13.5")  # 1.5 + 12: 3.5 of it a debt on `grant`
    assert budget(cast.alpha).balance == D("-3.5")
    billing.grant_void(grant=grant, reason="chargeback")  # nothing positive left to sweep
    assert budget(cast.alpha).balance == D("-3.5")
    event(job, "finished", 300)  # it had finished at 300 s: it cost 4.5, 9 was overcharged
    job.refresh_from_db()
    assert ledger_audit() == []
    # Giving back the 3.5 it owes brings no dead credit to life (the remainder goes to 0); the
    # project must not stay in debt (402 on every reservation) for usage that never happened.
    assert budget(cast.alpha).balance == D("0")
    assert job.charged_amount == D("10")


# A retried closing (0-byte) storage event after a newer event: 409 since the fix, was a no-op.


@pytest.mark.django_db
def test_storage_closing_event_resent_is_a_no_op(cast, storage, clock):
    store(cast, storage, GB, 0)
    clock.move_to(at(100))
    assert store(cast, storage, 0, 100) is None
    clock.move_to(at(200))
    store(cast, storage, 2 * GB, 200)
    assert store(cast, storage, GB, 0) is not None  # a sized event resent: a no-op
    try:
        again = store(cast, storage, 0, 100)  # the closing event resent
    except StorageOutOfOrderError:
        pytest.fail("the same 0-byte event again is refused as out of order (409)")
    assert again is None


# Rollups: a large storage interval's byte-seconds overflow the units column.


@pytest.mark.django_db
def test_rollup_survives_a_large_storage_interval(cast, storage, clock):
    billing.budget_grant(project=cast.alpha, amount="20000")
    store(cast, storage, 10**18, 0)  # the largest size accepted
    clock.move_to(at(10))
    store(cast, storage, 0, 10)  # 10^19 byte-seconds, 10,000 credits
    assert ledger_audit() == []
    usage_rollup()  # found: NumericValueOutOfRange, every lab's rollups stop for 2 hours
    row = UsageRollup.objects.get(period=RollupPeriod.HOUR, project=cast.alpha)
    assert row.amount == D("10000")


# Rollups: a rerun for an earlier moment deletes the later days' daily rows for good.


@pytest.mark.django_db
def test_rollup_rerun_for_an_earlier_moment_keeps_later_days(cast):
    with time_machine.travel(T0, tick=False) as clock:
        llm = priced_service()
        billing.budget_grant(project=cast.alpha, amount="100")

        def spend(count):
            job = reservation_create(project=cast.alpha, service=llm, quantity=count, params={})
            usage.oneshot_usage_record(
                job_uuid=job.uuid, project=cast.alpha, subtype="ml-llm", count=count,
                at=job.reserved_at,
            )  # fmt: skip

        spend(1000)  # day 1: 0.01
        usage_rollup()
        clock.move_to(T0 + timedelta(days=1))
        spend(2000)  # day 2: 0.02
        usage_rollup()
        clock.move_to(T0 + timedelta(days=3))
        spend(3000)  # day 4: 0.03
        usage_rollup()
        days = lambda: {  # noqa: E731
            row.period_start.date(): row.amount
            for row in UsageRollup.objects.filter(period=RollupPeriod.DAY)
        }
        assert sorted(days().values()) == [D("0.01"), D("0.02"), D("0.03")]
        usage_rollup(now=T0 + timedelta(minutes=30))  # rebuild day 1 (a late charge, say)
        clock.move_to(T0 + timedelta(days=3, minutes=1))
        usage_rollup()  # the next regular run
        assert sorted(days().values()) == [D("0.01"), D("0.02"), D("0.03")]
