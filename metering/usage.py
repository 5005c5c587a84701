"""Usage events: oneshot usage settled when posted, long-running jobs driven by their
events, storage held in intervals. Charging itself is metering/charging.py.

The accounting-service's flaws are fixed here (its section 6): usage for a cancelled job is a
409; a `finished` without `started` bills from the reservation; a `finished` earlier than the
last charge refunds the difference and closes the job; unused reservations expire
(metering/reservations.py).
"""

from __future__ import annotations

import uuid as uuid_lib
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts import selectors as account_selectors
from accounts.models import Project, ServiceToken
from metering import charging, selectors
from metering.errors import (
    JobAlreadyFinishedError,
    JobCancelledError,
    JobNotFoundError,
    StorageOutOfOrderError,
    UsageError,
)
from metering.models import Job, Service, ServiceType

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


def _event_job_locked(job_uuid: uuid_lib.UUID, actor: Actor) -> Job:
    """The job an event names, locked, among those the caller may see."""
    jobs = _jobs_locked().filter(uuid=job_uuid)
    if actor is not None:
        jobs = jobs.filter(project__in=account_selectors.project_list(actor=actor))
    job = jobs.first()
    if job is None:
        raise JobNotFoundError()
    return job


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
        amount = charging.cost_of(selectors.price_tiers(job.price), count, discount)
        charging.job_charge(job, amount, release_rest=True, reason="oneshot_usage", actor=actor)
        job.started_at = job.finished_at = job.last_alive_at = job.last_charged_at = at
        job.closed_at = now
        job.usage_params = {"count": count}
        job.name = name or job.name
        job.save()
        return job


# Long-running ----------------------------------------------------------------------------------


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
    if job.started_at is None:
        # Its `started` was lost: bill from the reservation, the earliest it can have started.
        if job.reserved_at is not None and at < job.reserved_at:
            raise UsageError("The job cannot finish before it was reserved")
        _longrun_start(job, job.reserved_at or at, instances, instance_type)
    if at < job.started_at:  # type: ignore[operator]
        raise UsageError("The job cannot finish before it started")
    if job.closed_at is not None:
        if job.finished_at == at:
            return  # the same event again
        closed_by_expiry = job.expired_at is not None and job.finished_at == job.expired_at
        if closed_by_expiry and at < job.finished_at:  # type: ignore[operator]
            # It finished before the charger gave up on it: give back what it overpaid, once.
            charging.longrun_close(
                job, end=at, now=timezone.now(), reason="finished_late", actor=actor
            )
            return
        if closed_by_expiry:
            return  # it ran on after expiry without heartbeats: it was charged up to expiry
        raise JobAlreadyFinishedError()
    job.last_alive_at = max(job.last_alive_at or at, at)
    charging.longrun_close(job, end=at, now=timezone.now(), reason="finished", actor=actor)


# Storage ---------------------------------------------------------------------------------------


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
        # Locked: the storage charger may be charging it right now.
        latest = (
            _jobs_locked()
            .filter(pk__in=intervals.values("pk"))
            .order_by("-started_at", "-id")
            .first()
        )
        reopened_at_that_moment = (
            latest is not None and latest.finished_at is None and latest.started_at == at
        )
        if not size and not reopened_at_that_moment and intervals.filter(finished_at=at).exists():
            return None  # the same closing event again: an interval ended then
        if latest is not None:
            if at < (latest.finished_at or latest.started_at):  # type: ignore[operator]
                raise StorageOutOfOrderError()
            if latest.finished_at is None:
                charging.storage_close(latest, end=at, now=now, actor=actor)
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
