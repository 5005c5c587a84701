"""Usage: oneshot usage settled when posted, long-running jobs driven by their events and
charged incrementally, storage held in intervals. Money moves through billing.charges only.

Every charge is computed from cumulative usage, so the increments of a job add up exactly to
its full cost: an increment is quantize(cost(0, now)) - quantize(cost(0, last charge)).
The accounting-service's flaws are fixed here (its section 6): usage for a cancelled job is a
409; a `finished` without `started` bills from the reservation; a `finished` earlier than the
last charge refunds the difference and closes the job; unused reservations expire
(metering/reservations.py).
"""

from __future__ import annotations

import logging
import uuid as uuid_lib
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts import selectors as account_selectors
from accounts.models import Project, ServiceToken
from billing import charges
from core.money import MAX_CREDITS, credits_quantize
from metering import selectors
from metering.cost import Tier, storage_cost, usage_cost
from metering.errors import (
    JobAlreadyFinishedError,
    JobCancelledError,
    JobNotFoundError,
    StorageOutOfOrderError,
    UsageError,
)
from metering.models import Job, Price, Service, ServiceType

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
Actor = ServiceToken | None


class LongrunStatus:
    STARTED = "started"
    RUNNING = "running"
    FINISHED = "finished"
    ALL = (STARTED, RUNNING, FINISHED)


def _jobs_locked() -> QuerySet[Job]:
    # OF self: the price is a nullable join, which FOR UPDATE cannot lock.
    return Job.objects.select_for_update(of=("self",)).select_related(
        "project__lab", "service", "price"
    )


def _locked(job: Job) -> Job:
    return _jobs_locked().get(pk=job.pk)


def _event_job_locked(job_uuid: uuid_lib.UUID, actor: Actor) -> Job:
    """The job an event names, locked, among those the caller may see."""
    jobs = _jobs_locked().filter(uuid=job_uuid)
    if actor is not None:
        jobs = jobs.filter(project__in=account_selectors.project_list(actor=actor))
    job = jobs.first()
    if job is None:
        raise JobNotFoundError()
    return job


def _tiers(price: Price) -> list[Tier]:
    return selectors.price_tiers(price)


def _cost(tiers: list[Tier], quantity: int, discount: Decimal) -> Decimal:
    """Quantized cost of cumulative usage 0 → quantity; refused when no balance could hold it."""
    cost = credits_quantize(usage_cost(tiers, 0, quantity, discount))
    if cost >= MAX_CREDITS:
        raise UsageError("The usage costs more than any balance can hold")
    return cost


def _record_charge(job: Job, amount: Decimal, *, release_rest: bool, reason: str, actor: Actor):
    result = charges.usage_charge(
        project=job.project,
        amount=amount,
        job_uuid=job.uuid,
        release_rest=release_rest,
        reason=reason,
        actor=actor,
    )
    job.charged_amount += result.charged
    return result


def _record_refund(job: Job, amount: Decimal, *, reason: str, actor: Actor) -> None:
    refunded = charges.usage_refund(
        project=job.project, job_uuid=job.uuid, amount=amount, reason=reason, actor=actor
    )
    job.charged_amount -= refunded


def _charged_until(job: Job) -> datetime:
    """Where a started job's next charge begins: its last charge, else its start."""
    return job.last_charged_at or job.started_at  # type: ignore[return-value]


def _usage_checked(job: Job, *, project: Project, kind: str, subtype: str) -> None:
    """The event must describe its job: same project, type and subtype."""
    wrong = [
        name
        for name, ok in (
            ("proj_id", job.project_id == project.pk),
            ("service_type", job.kind == kind),
            ("service_subtype", job.service.slug == subtype),
        )
        if not ok
    ]
    if wrong:
        raise UsageError(f"Job {job.uuid} has incompatible attributes: {wrong}")


# Oneshot ---------------------------------------------------------------------------------------


def oneshot_usage_record(
    *,
    job_uuid: uuid_lib.UUID,
    project: Project,
    subtype: str,
    count: int,
    at: datetime,
    name: str | None = None,
    actor: Actor = None,
) -> Job:
    """Settle a oneshot job: charge its cost (the hold first, the project for any excess) and
    release the rest. The same usage again is a no-op; different usage for a closed job is 409."""
    with transaction.atomic():
        job = _event_job_locked(job_uuid, actor)
        _usage_checked(job, project=project, kind=ServiceType.ONESHOT, subtype=subtype)
        if job.cancelled_at is not None:
            raise JobCancelledError()
        if job.closed_at is not None:
            if job.usage_params.get("count") == count:
                return job
            raise JobAlreadyFinishedError()
        now = timezone.now()
        discount = selectors.discount_rate(lab=job.project.lab, at=now)
        amount = _cost(_tiers(job.price), count, discount)
        _record_charge(job, amount, release_rest=True, reason="oneshot_usage", actor=actor)
        job.started_at = job.finished_at = job.last_alive_at = job.last_charged_at = at
        job.closed_at = now
        job.usage_params = {"count": count}
        job.name = name or job.name
        job.save()
        return job


# Long-running ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Meter:
    """Cumulative usage of a long-running job: instances times whole seconds since it started."""

    tiers: list[Tier]
    instances: int
    started_at: datetime
    discount: Decimal

    def cost_until(self, moment: datetime) -> Decimal:
        seconds = max(int((moment - self.started_at).total_seconds()), 0)
        return _cost(self.tiers, self.instances * seconds, self.discount)


def _meter(job: Job, now: datetime) -> _Meter:
    instances = job.usage_params.get("instances", job.reservation_params.get("instances", 0))
    return _Meter(
        tiers=_tiers(job.price),
        instances=int(instances or 0),
        started_at=job.started_at,  # type: ignore[arg-type]
        discount=selectors.discount_rate(lab=job.project.lab, at=now),
    )


def _longrun_close(job: Job, *, end: datetime, now: datetime, reason: str, actor: Actor) -> None:
    """The final charge of a long-running job up to `end` (a refund if it was charged past
    `end`), then release what it still holds. The caller holds the job's row lock."""
    meter = _meter(job, now)
    last = _charged_until(job)
    due, paid = meter.cost_until(end), meter.cost_until(last)
    if due < paid:
        _record_refund(job, paid - due, reason=f"{reason}:refund_project", actor=actor)
    _record_charge(job, max(due - paid, ZERO), release_rest=True, reason=reason, actor=actor)
    job.finished_at = job.last_charged_at = end
    job.closed_at = now


def _longrun_start(job: Job, at: datetime, instances: int | None, instance_type: str | None):
    job.started_at = at
    job.last_alive_at = max(job.last_alive_at or at, at)
    if instances is None:
        instances = job.reservation_params.get("instances")
    job.usage_params = {"instances": instances, "instance_type": instance_type}


def longrun_event_record(
    *,
    job_uuid: uuid_lib.UUID,
    project: Project,
    subtype: str,
    status: str,
    at: datetime,
    instances: int | None = None,
    instance_type: str | None = None,
    name: str | None = None,
    actor: Actor = None,
) -> Job:
    """Apply a `started`, `running` (heartbeat) or `finished` event. Repeats are no-ops. A
    `finished` charges the job up to its finish at once and releases the rest of its hold."""
    with transaction.atomic():
        job = _event_job_locked(job_uuid, actor)
        _usage_checked(job, project=project, kind=ServiceType.LONGRUN, subtype=subtype)
        if job.cancelled_at is not None:
            raise JobCancelledError()
        if status == LongrunStatus.STARTED:
            if job.started_at is None:
                _longrun_start(job, at, instances, instance_type)
        elif status == LongrunStatus.RUNNING:
            if job.closed_at is not None:
                return job  # a heartbeat that crossed the finish on the wire
            if job.started_at is None:  # its `started` was lost: the first heartbeat starts it
                _longrun_start(job, at, instances, instance_type)
            job.last_alive_at = max(job.last_alive_at or at, at)
        else:
            _longrun_finish(
                job, at=at, instances=instances, instance_type=instance_type, actor=actor
            )
        job.name = name or job.name
        job.save()
        return job


def _longrun_finish(
    job: Job, *, at: datetime, instances: int | None, instance_type: str | None, actor: Actor
) -> None:
    if job.closed_at is not None:
        if job.finished_at == at:
            return  # the same event again
        if job.expired_at is not None and at < job.finished_at:  # type: ignore[operator]
            # It finished before the charger gave up on it: give back what it overpaid.
            _longrun_close(job, end=at, now=timezone.now(), reason="finished_late", actor=actor)
            return
        if job.expired_at is not None:
            return  # it ran on after expiry without heartbeats: it was charged up to expiry
        raise JobAlreadyFinishedError()
    if job.started_at is None:
        # Its `started` was lost: bill from the reservation, the earliest it can have started.
        _longrun_start(job, min(job.reserved_at or at, at), instances, instance_type)
    if at < job.started_at:  # type: ignore[operator]
        raise UsageError("The job cannot finish before it started")
    job.last_alive_at = max(job.last_alive_at or at, at)
    _longrun_close(job, end=at, now=timezone.now(), reason="finished", actor=actor)


def longrun_charge(*, job: Job, now: datetime | None = None, actor: Actor = None) -> Decimal:
    """One charging step of a started long-running job, in its own transaction: the increment
    since the last charge (at least LONGRUN_MIN_CHARGE_INTERVAL_SECONDS and MIN_CHARGE_AMOUNT),
    or, when its heartbeats stopped for LONGRUN_EXPIRY_SECONDS, the final charge up to that
    expiry. Returns the amount charged (negative for a refund)."""
    now = now or timezone.now()
    with transaction.atomic():
        job = _locked(job)
        if job.started_at is None or job.closed_at is not None:
            return ZERO
        before = job.charged_amount
        expiry = (job.last_alive_at or job.started_at) + timedelta(
            seconds=settings.LONGRUN_EXPIRY_SECONDS
        )
        if job.finished_at is not None:
            _longrun_close(job, end=job.finished_at, now=now, reason="finished", actor=actor)
        elif now > expiry:
            job.expired_at = expiry
            _longrun_close(job, end=expiry, now=now, reason="expired", actor=actor)
        else:
            last = _charged_until(job)
            if (now - last).total_seconds() < settings.LONGRUN_MIN_CHARGE_INTERVAL_SECONDS:
                return ZERO
            meter = _meter(job, now)
            amount = meter.cost_until(now) - meter.cost_until(last)
            if amount < settings.MIN_CHARGE_AMOUNT:
                return ZERO
            _record_charge(job, amount, release_rest=False, reason="running", actor=actor)
            job.last_charged_at = now
        job.save()
        return job.charged_amount - before


# Storage ---------------------------------------------------------------------------------------


def _storage_amount(job: Job, start: datetime, end: datetime, at: datetime) -> Decimal:
    """Cost of holding the job's bytes from `start` to `end`, at the price valid at `at`."""
    price = selectors.price_current(service=job.service, lab=job.project.lab, at=at)
    job.price = price
    seconds = int((end - start).total_seconds())
    discount = selectors.discount_rate(lab=job.project.lab, at=at)
    size = int(job.usage_params.get("size", 0))
    return credits_quantize(storage_cost(_tiers(price), size, seconds, discount))


def _storage_close(job: Job, *, end: datetime, now: datetime, actor: Actor) -> None:
    last = _charged_until(job)
    if end >= last:
        _record_charge(
            job,
            _storage_amount(job, last, end, end),
            release_rest=False,
            reason="storage",
            actor=actor,
        )
    else:  # charged past the moment it really ended
        _record_refund(job, _storage_amount(job, end, last, end), reason="storage", actor=actor)
    job.finished_at = job.last_charged_at = end
    job.closed_at = now
    job.save()


def storage_event_record(
    *, project: Project, service: Service, size: int, at: datetime, actor: Actor = None
) -> Job | None:
    """The project holds `size` bytes from `at` on: close (and charge) its open interval and
    open a new one (none for 0 bytes). The same event again is a no-op; an event older than
    the project's latest one is refused (409), since intervals cannot overlap."""
    now = timezone.now()
    selectors.price_current(service=service, lab=project.lab, at=at)  # 404 now, not later
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()  # one writer a project
        intervals = Job.objects.filter(project=project, kind=ServiceType.STORAGE)
        if size and (same := intervals.filter(started_at=at, usage_params__size=size).first()):
            return same  # the same event again
        if not size and intervals.filter(finished_at=at).exclude(started_at=at).exists():
            return None  # the same closing event again
        latest = (
            intervals.select_related("project__lab", "service")
            .order_by("-started_at", "-id")
            .first()
        )
        if latest is not None:
            if at < (latest.finished_at or latest.started_at):  # type: ignore[operator]
                raise StorageOutOfOrderError()
            if latest.finished_at is None:
                _storage_close(latest, end=at, now=now, actor=actor)
        if size == 0:
            return None
        return Job.objects.create(
            lab=project.lab,
            project=project,
            service=service,
            kind=ServiceType.STORAGE,
            started_at=at,
            last_alive_at=at,
            usage_params={"size": size},
        )


def storage_charge(*, job: Job, now: datetime | None = None, actor: Actor = None) -> Decimal:
    """Charge an open storage interval up to now, at most every
    STORAGE_MIN_CHARGE_INTERVAL_SECONDS and at least MIN_CHARGE_AMOUNT. Returns the amount."""
    now = now or timezone.now()
    with transaction.atomic():
        job = _locked(job)
        if job.closed_at is not None or job.finished_at is not None:
            return ZERO
        last = _charged_until(job)
        if (now - last).total_seconds() < settings.STORAGE_MIN_CHARGE_INTERVAL_SECONDS:
            return ZERO
        amount = _storage_amount(job, last, now, now)
        if amount < settings.MIN_CHARGE_AMOUNT:
            return ZERO
        _record_charge(job, amount, release_rest=False, reason="storage", actor=actor)
        job.last_charged_at = now
        job.save()
        return amount
