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
from decimal import Decimal

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from psycopg.types.json import Jsonb

from accounts.models import Lab, Project, ServiceToken
from core.db import Columns, execute_prepared
from metering import charging, selectors
from metering.cost import Tier
from metering.errors import (
    JobAlreadyFinishedError,
    JobCancelledError,
    JobNotFoundError,
    MissingPriceError,
    StorageOutOfOrderError,
    UsageError,
)
from metering.models import Job, Price, Service, ServiceType

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


_JOB, _PROJECT, _LAB = Columns(Job, "j"), Columns(Project, "p"), Columns(Lab, "l")
_SERVICE, _PRICE = Columns(Service, "s"), Columns(Price, "pr")
_EVENT_JOB_COLUMNS = f"{_JOB.sql}, {_PROJECT.sql}, {_LAB.sql}, {_SERVICE.sql}, {_PRICE.sql}"
# _jobs_locked() as one prepared statement: every usage event reads it.
_EVENT_JOB = f"""
SELECT {_EVENT_JOB_COLUMNS}
  FROM metering_job j
  JOIN accounts_project p ON p.id = j.project_id
  JOIN accounts_lab l ON l.id = p.lab_id
  JOIN metering_service s ON s.id = j.service_id
  LEFT JOIN metering_price pr ON pr.id = j.price_id
 WHERE j.uuid = %(uuid)s AND (%(lab)s::bigint IS NULL OR p.lab_id = %(lab)s::bigint)
   FOR UPDATE OF j
"""  # noqa: S608


# And, for a oneshot usage, the tiers of the job's price and the lab's discount at %(at)s.
_ONESHOT_JOB = _EVENT_JOB.replace(
    _EVENT_JOB_COLUMNS,
    f"{_EVENT_JOB_COLUMNS}, {selectors.TIERS_SQL.format(price='j.price_id')},"
    f" {selectors.DISCOUNT_SQL.format(lab='p.lab_id', at='%(at)s')}",
    1,
)


def _event_job_locked(job_uuid: uuid_lib.UUID, actor: Actor) -> Job:
    """The job an event names, locked, among those the caller may see (a lab-bound token: its
    lab's; a global token or no actor: all)."""
    params = {"uuid": job_uuid, "lab": actor.lab_id if actor is not None else None}
    rows = execute_prepared(_EVENT_JOB, params)
    if not rows:
        raise JobNotFoundError()
    return _job_loaded(rows[0])


def _oneshot_job_locked(
    job_uuid: uuid_lib.UUID, actor: Actor, at: datetime
) -> tuple[Job, list[Tier], Decimal]:
    """_event_job_locked, with its price's tiers and its lab's discount at `at`: one round
    trip for what a oneshot usage reads."""
    params = {"uuid": job_uuid, "lab": actor.lab_id if actor is not None else None, "at": at}
    rows = execute_prepared(_ONESHOT_JOB, params)
    if not rows:
        raise JobNotFoundError()
    *job_row, tiers, discount = rows[0]
    return _job_loaded(tuple(job_row)), selectors.tiers_of(tiers), discount or Decimal(0)


def _job_loaded(row: tuple) -> Job:
    """A row of _EVENT_JOB as select_related would load it."""
    parts, start = [], 0
    for columns in (_JOB, _PROJECT, _LAB, _SERVICE, _PRICE):
        parts.append(columns.load(row, start) if row[start] is not None else None)
        start += len(columns)
    job, project, lab, service, price = parts
    project.lab = lab
    job.project, job.service, job.price = project, service, price
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
        now = timezone.now()
        job, tiers, discount = _oneshot_job_locked(job_uuid, actor, now)
        _usage_checked(job, project=project, kind=ServiceType.ONESHOT, subtype=subtype)
        if job.cancelled_at is not None:
            raise JobCancelledError()
        if job.closed_at is not None:
            if job.usage_params.get("count") == count:
                return job
            raise JobAlreadyFinishedError()
        if job.price_id is None:  # every reservation has one; never charge nothing instead
            raise MissingPriceError(f"Missing price for job {job.uuid}")
        amount = charging.cost_of(tiers, count, discount)
        charging.job_charge(job, amount, release_rest=True, reason="oneshot_usage", actor=actor)
        job.started_at = job.finished_at = job.last_alive_at = job.last_charged_at = at
        job.closed_at = job.updated_at = now
        job.usage_params = {"count": count}
        job.name = name or job.name
        execute_prepared(_ONESHOT_SETTLED, _settled(job))
        return job


_ONESHOT_SETTLED = """
UPDATE metering_job
   SET started_at = %(at)s, finished_at = %(at)s, last_alive_at = %(at)s,
       last_charged_at = %(at)s, closed_at = %(closed_at)s, updated_at = %(closed_at)s,
       usage_params = %(usage_params)s, name = %(name)s, charged_amount = %(charged)s
 WHERE id = %(id)s
"""


def _settled(job: Job) -> dict[str, object]:
    return {
        "at": job.finished_at,
        "closed_at": job.closed_at,
        "usage_params": Jsonb(job.usage_params),
        "name": job.name,
        "charged": job.charged_amount,
        "id": job.pk,
    }


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
        # One writer a project; NO KEY, so that new jobs' foreign-key checks on the project
        # (an authorize holding the ledger's accounts) do not wait for it: no deadlock.
        Project.objects.select_for_update(no_key=True).filter(pk=project.pk).first()
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
