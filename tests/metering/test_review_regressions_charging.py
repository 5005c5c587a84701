"""Regressions found in review (charging): each test failed before its fix."""

from datetime import timedelta
from decimal import Decimal

import pytest

from billing import services as billing
from core.money import credits_quantize
from metering import charging, usage
from metering.cost import Tier, storage_cost
from metering.errors import JobAlreadyFinishedError, UsageError
from metering.models import Job, ServiceType
from tests.metering.test_reservations import priced_service
from tests.metering.test_usage import T0, at, event, reserve_longrun

D = Decimal


def _post_longrun(client, job, status, seconds, instances):
    return client.post(
        "/api/accounting/usage/longrun",
        {
            "type": "longrun",
            "subtype": "single-cell-sim",
            "job_id": str(job.uuid),
            "proj_id": str(job.project.uuid),
            "instances": instances,
            "instance_type": "",
            "status": status,
            "timestamp": int(at(seconds).timestamp()),
        },
        format="json",
    )


# 1. One job with an absurd `instances` stops the long-running charger for its whole batch.


@pytest.mark.django_db
def test_absurd_instances_do_not_stop_the_longrun_charger(cast, sim, clock, token_client):
    gateway = token_client(["accounting"])
    good = reserve_longrun(cast, sim, instances=1, duration=600)
    bad = reserve_longrun(cast, sim, instances=1, duration=600)
    assert _post_longrun(gateway, good, "started", 0, "1").status_code == 201
    answer = _post_longrun(gateway, bad, "started", 0, "10000000000000")  # 10^13, accepted
    if answer.status_code != 201:
        assert answer.status_code in (400, 422)  # refusing it up front is a fix too
    clock.move_to(at(120))
    charging.longrun_jobs_charge()  # must not raise: one job cannot block every other one
    good.refresh_from_db()
    assert good.charged_amount == D("2.7")  # 1.5 fixed + 120 s x 0.01


# 2. A huge storage `size` is accepted; its charge overflows NUMERIC(24,6) and stops the storage
#    charger for every job of its batch (and the project's next storage event is a 500).


@pytest.mark.django_db
def test_huge_storage_size_does_not_stop_the_storage_charger(cast, clock, token_client):
    priced_service("storage", ServiceType.STORAGE, [Tier(0, None, D(0), D("0.000000001"))])
    billing.budget_grant(project=cast.alpha, amount="400")
    billing.budget_grant(project=cast.beta, amount="400")
    gateway = token_client(["accounting"])

    def post_storage(project, size, seconds):
        return gateway.post(
            "/api/accounting/usage/storage",
            {
                "type": "storage",
                "subtype": "storage",
                "proj_id": str(project.uuid),
                "size": size,
                "timestamp": int(at(seconds).timestamp()),
            },
            format="json",
        )

    assert post_storage(cast.beta, 1000, 0).status_code == 201
    answer = post_storage(cast.alpha, 10**30, 0)
    if answer.status_code != 201:
        assert answer.status_code in (400, 422)
    clock.move_to(at(7200))
    charging.storage_jobs_charge()  # must not raise
    beta_job = Job.objects.get(project=cast.beta, kind=ServiceType.STORAGE)
    assert beta_job.charged_amount == D("0.0072")  # 1000 B x 7200 s x 1e-9
    # and the project's next event is an answer, not a 500
    assert post_storage(cast.alpha, 0, 7300).status_code < 500


# 3. A `finished` earlier than its start is refused for a live job (400), but accepted for an
#    expired one: everything it was charged is refunded and finished_at < started_at.


@pytest.mark.django_db
def test_expired_job_cannot_finish_before_it_started(cast, sim, clock):
    job = reserve_longrun(cast, sim, instances=1, duration=600)
    event(job, "started", 0)
    clock.move_to(at(7300))
    charging.longrun_charge(job=job)  # expires at its last heartbeat + 3600 s
    job.refresh_from_db()
    assert job.expired_at is not None and job.charged_amount == D("37.5")
    with pytest.raises(UsageError):
        event(job, "finished", -100)
    job.refresh_from_db()
    assert job.charged_amount == D("37.5")
    assert job.finished_at >= job.started_at


# 4. After an expired job got its late `finished` (refund, closed), a second, different
#    `finished` refunds again instead of 409 JOB_ALREADY_FINISHED.


@pytest.mark.django_db
def test_second_late_finished_is_a_conflict_not_another_refund(cast, sim, clock):
    job = reserve_longrun(cast, sim, instances=1, duration=600)
    event(job, "started", 0)
    clock.move_to(at(7300))
    charging.longrun_charge(job=job)
    event(job, "finished", 1000)  # the real finish, late: refunds down to 1.5 + 10
    job.refresh_from_db()
    assert job.charged_amount == D("11.5")
    with pytest.raises(JobAlreadyFinishedError):
        event(job, "finished", 500)  # contradicts the finish already recorded
    job.refresh_from_db()
    assert job.charged_amount == D("11.5")


# 5. Storage increments do not add up to the cost of the interval: each increment is quantized
#    on its own (systematic bias) and drops the fraction of a second the charger's clock had.


@pytest.mark.django_db
def test_storage_increments_add_up_to_the_interval_cost(cast, clock):
    multiplier = D("1E-16")
    storage = priced_service("storage", ServiceType.STORAGE, [Tier(0, None, D(0), multiplier)])
    billing.budget_grant(project=cast.alpha, amount="400")
    size = 1_416_667  # costs 0.00000051 an hour
    job = usage.storage_event_record(project=cast.alpha, service=storage, size=size, at=T0)
    for hour in range(1, 11):
        clock.move_to(at(3600 * hour))
        charging.storage_charge(job=job)
    usage.storage_event_record(project=cast.alpha, service=storage, size=0, at=at(36000))
    job.refresh_from_db()
    full = credits_quantize(storage_cost([Tier(0, None, D(0), multiplier)], size, 36000, D(0)))
    assert full == D("0.000005")
    assert job.charged_amount == full  # charged 0.000010: twice the cost


@pytest.mark.django_db
def test_storage_charges_do_not_drop_fractions_of_seconds(cast, clock):
    storage = priced_service(
        "storage", ServiceType.STORAGE, [Tier(0, None, D(0), D("0.000000001"))]
    )
    billing.budget_grant(project=cast.alpha, amount="400")
    job = usage.storage_event_record(project=cast.alpha, service=storage, size=10**6, at=T0)
    clock.move_to(at(3600) + timedelta(milliseconds=500))
    charging.storage_charge(job=job)  # 3600.5 s, charged as 3600 s
    usage.storage_event_record(project=cast.alpha, service=storage, size=0, at=at(7201))
    job.refresh_from_db()
    assert job.charged_amount == D("7.201")  # 7201 s x 0.001; charged 7.200


# 3b. A `finished` without `started`, timestamped before the job was even reserved: started_at
#     becomes that timestamp, the job is billed 0 for zero seconds (no fixed cost either) and
#     its hold is released. The README promises billing "from the reservation time".


@pytest.mark.django_db
def test_finished_without_started_before_the_reservation_is_refused(cast, sim, clock):
    job = reserve_longrun(cast, sim, instances=1, duration=600)  # reserved at T0, holds 7.5
    clock.move_to(at(1200))
    with pytest.raises(UsageError):
        event(job, "finished", -600)  # "finished" ten minutes before it was reserved
    job.refresh_from_db()
    assert job.closed_at is None
