"""Reservations: price the estimated work, hold its cost, release what a job never used."""

from __future__ import annotations

import logging
import uuid as uuid_lib
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Project, ServiceToken, User
from billing import services as billing
from billing.errors import IdempotencyConflictError, InsufficientFundsError
from core.money import MAX_CREDITS, credits_quantize
from metering import reserve_sql, selectors
from metering.cost import usage_cost
from metering.errors import JobAlreadyCancelledError, JobAlreadyStartedError
from metering.models import Job, Service

logger = logging.getLogger(__name__)

RELEASE_REASON = "job_cancelled:release_reservation"


def reservation_create(
    *,
    project: Project,
    service: Service,
    quantity: int,
    params: dict[str, Any],
    user_uuid: uuid_lib.UUID | None = None,
    group_uuid: uuid_lib.UUID | None = None,
    name: str = "",
    actor: User | ServiceToken | None = None,
    idempotency_key: str | None = None,
    fingerprint: str | None = None,
) -> Job:
    """A job with the estimated cost of `quantity` units held in the project's reservation
    account. 404 without a price; 402 INSUFFICIENT_FUNDS, with nothing written, when the
    project's spendable budget does not cover it (equality is enough). The job and its hold
    are one call (metering.reserve_sql)."""
    now = timezone.now()
    pricing = selectors.pricing_current(service=service, lab=project.lab, at=now)
    amount = credits_quantize(usage_cost(pricing.tiers, 0, quantity, pricing.discount))
    if amount >= MAX_CREDITS:  # no project holds that much; refuse before writing anything
        raise InsufficientFundsError(
            "Reservation not allowed because of insufficient funds", requested_amount=amount
        )
    job = reservation_job_new(
        project=project,
        service_id=service.pk,
        kind=service.type,
        price_id=pricing.price_id,
        amount=amount,
        params=params,
        job_uuid=uuid_lib.uuid4(),
        at=now,
    )
    job.user_uuid, job.group_uuid, job.name = user_uuid, group_uuid, name
    if idempotency_key is not None:
        job.idempotency_key, job.request_fingerprint = idempotency_key, fingerprint
    return reserve_sql.reservation_write(job, actor=actor)


def reservation_fingerprint(
    *, kind: str, subtype: str, project: uuid_lib.UUID, quantity: int, **details: Any
) -> str:
    """The digest a reservation's Idempotency-Key is checked against: equal requests give
    equal digests (a detail left out, null or empty is one)."""
    plain = {
        name: {k: "" if v is None else v for k, v in value.items()}
        if isinstance(value, dict)
        else ("" if value is None else value)
        for name, value in details.items()
    }
    return billing.request_fingerprint(
        "reservation", kind=kind, subtype=subtype, project=project, quantity=quantity, **plain
    )


def reservation_once(
    *, idempotency_key: str | None, fingerprint: str, create: Callable[[], Job]
) -> Job:
    """`create()` (a reservation_create given this key and fingerprint), unless a reservation
    was made with the key: then its job, before anything is priced again (a retry gets its
    answer even once the price has changed) and with nothing more held; 409 when the key was
    used for another request. A refusal writes nothing, so a refused request sent again is
    decided again; of concurrent requests with one key, one writes and the others replay."""
    if idempotency_key is None:
        return create()
    first = Job.objects.filter(idempotency_key=idempotency_key).first()
    if first is None:
        try:
            return create()
        except IntegrityError:  # a concurrent request with the key wrote its job first
            first = Job.objects.filter(idempotency_key=idempotency_key).first()
            if first is None:
                raise
    if first.request_fingerprint != fingerprint:
        raise IdempotencyConflictError()
    return first


@transaction.atomic
def reservation_release(
    *, job: Job, actor: User | ServiceToken | None = None
) -> tuple[Job, Decimal]:
    """Cancel a job that never started and give back its hold. Returns the job and the amount
    released."""
    # The job's row only: a lock on its project would block every new job's foreign-key check
    # there while this waits for the ledger's accounts, which an authorize holds: a deadlock.
    job = Job.objects.select_for_update(of=("self",)).select_related("project").get(pk=job.pk)
    if job.started_at is not None:
        raise JobAlreadyStartedError()
    if job.cancelled_at is not None:
        raise JobAlreadyCancelledError()
    released = billing.hold_release(
        project=job.project, job_uuid=job.uuid, actor=actor, reason=RELEASE_REASON
    )
    job.cancelled_at = timezone.now()
    job.save(update_fields=["cancelled_at", "updated_at"])
    return job, released


def reservation_job_new(
    *,
    project: Project,
    service_id: int,
    kind: str,
    price_id: int,
    amount: Decimal,
    params: dict[str, Any],
    job_uuid: uuid_lib.UUID,
    at: datetime,
) -> Job:
    """The unsaved job row of an already priced reservation (authorize writes it in the
    statement that writes its hold: keys.hold_function)."""
    job = Job(
        uuid=job_uuid,
        lab_id=project.lab_id,
        project=project,
        service_id=service_id,
        kind=kind,
        price_id=price_id,
        reservation_params=params,
        reserved_amount=amount,
        reserved_at=at,
        reservation_expires_at=at + timedelta(seconds=settings.RESERVATION_TTL_SECONDS),
    )
    job.created_at = job.updated_at = timezone.now()
    return job


def reservations_expire(*, now: datetime | None = None, batch: int = 500) -> int:
    """Release unused reservations past their TTL, one job per transaction; jobs another
    worker holds are skipped. Safe to run twice or to kill midway. Returns how many expired."""
    now = now or timezone.now()
    expired = 0
    while True:
        with transaction.atomic():
            jobs = list(
                Job.objects.select_for_update(skip_locked=True, of=("self",))  # as release
                .select_related("project")
                .filter(
                    reservation_expires_at__lte=now,
                    started_at__isnull=True,
                    cancelled_at__isnull=True,
                    finished_at__isnull=True,
                )
                .order_by("reservation_expires_at")[:1]
            )
            if not jobs:
                break
            job = jobs[0]
            billing.hold_release(
                project=job.project, job_uuid=job.uuid, reason="reservation_expired"
            )
            job.cancelled_at = now
            job.save(update_fields=["cancelled_at", "updated_at"])
            expired += 1
        if expired >= batch:
            break
    if expired:
        logger.info("expired %s unused reservation(s)", expired)
    return expired
