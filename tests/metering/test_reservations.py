"""Reservations hold exactly the estimated cost; concurrency never overspends."""

import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from accounts.services import lab_create, project_create
from billing import services as billing
from billing.audit import ledger_audit
from billing.errors import InsufficientFundsError
from billing.selectors import job_held, project_balances
from metering import services
from metering.cost import Tier
from metering.errors import JobAlreadyCancelledError, MissingPriceError
from metering.models import Job, Service, ServiceType
from metering.reservations import reservation_create, reservation_release, reservations_expire

D = Decimal


def priced_service(slug="ml-llm", kind=ServiceType.ONESHOT, tiers=None):
    service = Service.objects.create(slug=slug, type=kind, name=slug, unit_label="unit")
    services.price_create(
        service=service,
        tiers=tiers or [Tier(0, None, D(0), D("0.00001"))],
        valid_from=timezone.now() - timedelta(days=1),
    )
    return service


def budget(project):
    return project_balances([project])[0]


@pytest.mark.django_db
def test_reference_numbers_oneshot_then_insufficient_funds(cast):
    llm = priced_service()
    billing.budget_grant(project=cast.alpha, amount="400")
    job = reservation_create(
        project=cast.alpha, service=llm, quantity=1_000_000, params={"count": 1_000_000}
    )
    assert job.reserved_amount == D("10")
    assert (budget(cast.alpha).balance, budget(cast.alpha).reserved) == (D("390"), D("10"))
    with pytest.raises(InsufficientFundsError) as raised:
        reservation_create(project=cast.alpha, service=llm, quantity=40_000_000, params={})
    assert raised.value.details == {"requested_amount": "400.000000"}
    assert Job.objects.count() == 1  # the refused job was not written


@pytest.mark.django_db
def test_longrun_reservation_prices_instances_times_duration(cast):
    sim = priced_service(
        "single-cell-sim", ServiceType.LONGRUN, [Tier(0, None, D("1.5"), D("0.01"))]
    )
    billing.budget_grant(project=cast.alpha, amount="400")
    job = reservation_create(
        project=cast.alpha,
        service=sim,
        quantity=2 * 3600,
        params={"instances": 2, "duration": 3600},
    )
    assert job.reserved_amount == D("73.5")
    with pytest.raises(InsufficientFundsError):
        reservation_create(project=cast.alpha, service=sim, quantity=12 * 3600, params={})


@pytest.mark.django_db
def test_equality_is_enough_and_a_free_job_holds_nothing(cast):
    llm = priced_service()
    billing.budget_grant(project=cast.alpha, amount="10")
    reservation_create(project=cast.alpha, service=llm, quantity=1_000_000, params={})
    free = reservation_create(project=cast.alpha, service=llm, quantity=0, params={})
    assert free.reserved_amount == 0 and job_held(job_uuid=free.uuid) == 0


@pytest.mark.django_db
def test_missing_price_is_refused(cast):
    service = Service.objects.create(
        slug="notebook", type=ServiceType.LONGRUN, name="nb", unit_label="s"
    )
    with pytest.raises(MissingPriceError):
        reservation_create(project=cast.alpha, service=service, quantity=1, params={})


@pytest.mark.django_db
def test_release_gives_back_the_hold_once(cast):
    llm = priced_service()
    billing.budget_grant(project=cast.alpha, amount="50")
    job = reservation_create(project=cast.alpha, service=llm, quantity=1_000_000, params={})
    job, released = reservation_release(job=job)
    assert released == D("10") and job.cancelled_at is not None
    assert (budget(cast.alpha).balance, budget(cast.alpha).reserved) == (D("50"), 0)
    with pytest.raises(JobAlreadyCancelledError):
        reservation_release(job=job)


@pytest.mark.django_db
def test_unused_reservations_expire_after_the_ttl_exactly_once(cast, settings):
    settings.RESERVATION_TTL_SECONDS = 3600
    llm = priced_service()
    billing.budget_grant(project=cast.alpha, amount="50")
    job = reservation_create(project=cast.alpha, service=llm, quantity=1_000_000, params={})
    assert reservations_expire() == 0
    with time_machine.travel(timezone.now() + timedelta(seconds=3601)):
        assert reservations_expire() == 1
        assert reservations_expire() == 0
    job.refresh_from_db()
    assert job.cancelled_at is not None
    assert (budget(cast.alpha).balance, budget(cast.alpha).reserved) == (D("50"), 0)


@pytest.mark.django_db(transaction=True)
def test_one_hundred_parallel_reservations_on_a_budget_for_thirty_seven():
    lab = lab_create(name="race")
    project = project_create(lab=lab, name="p")
    llm = priced_service()
    billing.budget_grant(project=project, amount="370")  # 37 jobs of 10 credits
    outcomes, errors = [], []
    barrier = threading.Barrier(100)

    def reserve():
        try:
            barrier.wait()
            reservation_create(
                project=project, service=llm, quantity=1_000_000, params={}, user_uuid=uuid.uuid4()
            )
            outcomes.append("ok")
        except InsufficientFundsError:
            outcomes.append("402")
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=reserve) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert outcomes.count("ok") == 37 and outcomes.count("402") == 63
    assert Job.objects.count() == 37
    assert (budget(project).balance, budget(project).reserved) == (0, D("370"))
    assert ledger_audit() == []
