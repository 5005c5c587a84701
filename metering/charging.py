"""Charging jobs: the cost of cumulative usage, the final charge that closes a job, and the
periodic chargers of long-running and storage jobs. Money moves through billing.charges only.

Every charge is computed from cumulative usage, so the increments of a job add up exactly to
its full cost: an increment is quantize(cost(0, now)) - quantize(cost(0, last charge)).
The periodic chargers claim jobs with `FOR UPDATE SKIP LOCKED`, a batch per transaction,
and move each job's `last_charged_at` in the transaction that charges it: two chargers never
charge a job twice, and a charger killed midway loses only its open batch, which the next run
charges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import ServiceToken
from billing import charges
from billing.errors import InsufficientFundsError
from core.db import execute_prepared
from core.money import MAX_CREDITS, credits_quantize
from metering import selectors
from metering.cost import Tier, storage_cost, usage_cost
from metering.errors import MissingPriceError, UsageError
from metering.models import Job, Price, ServiceType

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
Actor = ServiceToken | None
# What a charging step writes on its jobs (their rows are locked meanwhile), in one statement:
# Django's bulk_update builds a CASE per row and field, which cost more than the charging.
_WRITE_BACK = """
UPDATE metering_job AS j
   SET charged_amount = v.charged_amount, last_charged_at = v.last_charged_at,
       finished_at = v.finished_at, expired_at = v.expired_at, closed_at = v.closed_at,
       price_id = v.price_id, updated_at = v.updated_at
  FROM unnest(%b::bigint[], %b::numeric[], %b::timestamptz[], %b::timestamptz[],
              %b::timestamptz[], %b::timestamptz[], %b::bigint[], %b::timestamptz[])
       AS v (id, charged_amount, last_charged_at, finished_at, expired_at, closed_at, price_id,
             updated_at)
 WHERE j.id = v.id
"""


def _jobs_write_back(jobs: list[Job], now: datetime) -> None:
    if not jobs:
        return
    columns = [
        [job.pk for job in jobs],
        [job.charged_amount for job in jobs],
        [job.last_charged_at for job in jobs],
        [job.finished_at for job in jobs],
        [job.expired_at for job in jobs],
        [job.closed_at for job in jobs],
        [job.price_id for job in jobs],
        [now] * len(jobs),
    ]
    execute_prepared(_WRITE_BACK, columns)


def cost_of(tiers: list[Tier], quantity: int, discount: Decimal) -> Decimal:
    """Quantized cost of cumulative usage 0 → quantity; refused when no balance could hold it."""
    cost = credits_quantize(usage_cost(tiers, 0, quantity, discount))
    if cost >= MAX_CREDITS:
        raise UsageError("The usage costs more than any balance can hold")
    return cost


def charged_until(job: Job) -> datetime:
    """Where a started job's next charge begins: its last charge, else its start."""
    return job.last_charged_at or job.started_at  # type: ignore[return-value]


def job_charge(job: Job, amount: Decimal, *, release_rest: bool, reason: str, actor: Actor):
    """Charge the job (its hold first) and count it on the job."""
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


def job_refund(job: Job, amount: Decimal, *, reason: str, actor: Actor) -> None:
    refunded = charges.usage_refund(
        project=job.project, job_uuid=job.uuid, amount=amount, reason=reason, actor=actor
    )
    job.charged_amount -= refunded


class Rates:
    """Discounts, tiers and storage prices at one moment, each looked up once per run."""

    def __init__(self, at: datetime, lab_ids: Iterable[int] = ()) -> None:
        self.at = at
        self._discounts = selectors.discount_rates(lab_ids=list(lab_ids), at=at)
        self._tiers: dict[int, list[Tier]] = {}
        self._prices: dict[tuple[int, int], Price] = {}

    def discount(self, lab_id: int) -> Decimal:
        if lab_id not in self._discounts:
            self._discounts.update(selectors.discount_rates(lab_ids=[lab_id], at=self.at))
        return self._discounts[lab_id]

    def tiers(self, price_id: int) -> list[Tier]:
        """A used price never changes (prices are append-only), so its tiers are read once."""
        if price_id not in self._tiers:
            self._tiers[price_id] = selectors.price_tiers(Price.objects.get(pk=price_id))
        return self._tiers[price_id]

    def storage_price(self, job: Job) -> Price:
        key = (job.service_id, job.lab_id)
        if key not in self._prices:
            self._prices[key] = selectors.price_current(
                service=job.service, lab=job.project.lab, at=self.at
            )
        return self._prices[key]


# Long-running -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Meter:
    """Cumulative usage of a long-running job: instances times whole seconds since it started."""

    tiers: list[Tier]
    instances: int
    started_at: datetime
    discount: Decimal

    @classmethod
    def of(cls, job: Job, rates: Rates) -> Meter:
        instances = job.usage_params.get("instances", job.reservation_params.get("instances"))
        return cls(
            tiers=rates.tiers(job.price_id),  # type: ignore[arg-type]
            instances=int(instances or 0),
            started_at=job.started_at,  # type: ignore[arg-type]
            discount=rates.discount(job.lab_id),
        )

    def cost_until(self, moment: datetime) -> Decimal:
        seconds = max(int((moment - self.started_at).total_seconds()), 0)
        return cost_of(self.tiers, self.instances * seconds, self.discount)


def longrun_close(
    job: Job, *, end: datetime, now: datetime, reason: str, actor: Actor, rates: Rates | None = None
) -> None:
    """The final charge of a long-running job up to `end` (a refund if it was charged past
    `end`), then release what it still holds. The caller holds the job's row lock and saves."""
    last = charged_until(job)
    if end < last:
        # Charged past its end: give back what those seconds cost at the discount of the charge
        # that covered them (the last one), not at today's.
        meter = Meter.of(job, Rates(last))
        refund = meter.cost_until(last) - meter.cost_until(end)
        job_refund(job, refund, reason=f"{reason}:refund_project", actor=actor)
        increment = ZERO
    else:
        meter = Meter.of(job, rates or Rates(now))
        increment = meter.cost_until(end) - meter.cost_until(last)
    job_charge(job, increment, release_rest=True, reason=reason, actor=actor)
    job.finished_at = job.last_charged_at = end
    job.closed_at = now


def _longrun_step(job: Job, now: datetime, rates: Rates) -> charges.ChargeOrder | None:
    """Close a finished or expired job at once (rare); return the order that charges a
    running one its increment, or None when it is not due."""
    expiry = (job.last_alive_at or job.started_at) + timedelta(  # type: ignore[operator]
        seconds=settings.LONGRUN_EXPIRY_SECONDS
    )
    if job.finished_at is not None or now > expiry:
        end, reason = (job.finished_at, "finished") if job.finished_at else (expiry, "expired")
        with transaction.atomic():  # a savepoint: a close that fails leaves no half of itself
            longrun_close(job, end=end, now=now, reason=reason, actor=None, rates=rates)
            job.expired_at = None if reason == "finished" else expiry
        return None
    last = charged_until(job)
    if (now - last).total_seconds() < settings.LONGRUN_MIN_CHARGE_INTERVAL_SECONDS:
        return None
    meter = Meter.of(job, rates)
    amount = meter.cost_until(now) - meter.cost_until(last)
    if amount < settings.MIN_CHARGE_AMOUNT:
        return None  # not lost: the next increment starts from the same cumulative cost
    return charges.ChargeOrder(job.project_id, job.lab_id, amount, job.uuid, reason="running")


# Storage ----------------------------------------------------------------------------------------


def storage_increment(job: Job, last: datetime, end: datetime, rates: Rates) -> Decimal:
    """What holding the job's bytes from `last` to `end` adds to its cost (negative if `end` is
    earlier), at the price of `rates`' moment. Computed from the interval's start, as
    quantize(cost(start, end)) - quantize(cost(start, last)), so the charges of an interval add
    up exactly to its cost and no fraction of a second is lost between them."""
    price = rates.storage_price(job)
    job.price = price
    tiers = selectors.price_tiers(price)
    size = int(job.usage_params.get("size", 0))
    discount = rates.discount(job.lab_id)

    def cost_until(moment: datetime) -> Decimal:
        seconds = max(int((moment - job.started_at).total_seconds()), 0)  # type: ignore[operator]
        cost = credits_quantize(storage_cost(tiers, size, seconds, discount))
        if cost >= MAX_CREDITS:
            raise UsageError("The storage costs more than any balance can hold")
        return cost

    return cost_until(end) - cost_until(last)


def storage_close(job: Job, *, end: datetime, now: datetime, actor: Actor) -> None:
    """The last charge of a storage interval, up to `end` (a refund if it was charged past
    `end`). The caller holds the job's row lock; this saves it."""
    last = charged_until(job)
    # A charge at the price valid at its end; charged past the end, a refund at the price of
    # the charge that covered those seconds.
    increment = storage_increment(job, last, end, Rates(max(end, last)))
    if increment >= 0:
        job_charge(job, increment, release_rest=False, reason="storage", actor=actor)
    else:
        job_refund(job, -increment, reason="storage", actor=actor)
    job.finished_at = job.last_charged_at = end
    job.closed_at = now
    job.save()


def _storage_step(job: Job, now: datetime, rates: Rates) -> charges.ChargeOrder | None:
    last = charged_until(job)
    if (now - last).total_seconds() < settings.STORAGE_MIN_CHARGE_INTERVAL_SECONDS:
        return None
    try:
        amount = storage_increment(job, last, now, rates)
    except MissingPriceError:
        logger.error("storage job %s has no price at %s: not charged", job.uuid, now)
        return None
    if amount < settings.MIN_CHARGE_AMOUNT:
        return None  # not lost: the next increment is computed from the interval's start
    return charges.ChargeOrder(job.project_id, job.lab_id, amount, job.uuid, reason="storage")


# The periodic chargers --------------------------------------------------------------------------


@dataclass
class ChargeRun:
    """What one charging run did, for its log line and its caller."""

    jobs_seen: int = 0
    jobs_charged: int = 0
    jobs_closed: int = 0
    jobs_failed: int = 0  # could not be charged (logged); the next run tries again
    amount: Decimal = ZERO
    seconds: float = 0.0
    batches: int = field(default=0)

    def __str__(self) -> str:
        return (
            f"{self.jobs_seen} job(s) seen, {self.jobs_charged} charged, {self.jobs_closed}"
            f" closed, {self.jobs_failed} failed, {self.amount} credits, {self.batches} batch(es)"
            f" in {self.seconds:.2f} s"
        )


Step = Callable[[Job, datetime, Rates], "charges.ChargeOrder | None"]


def _jobs_charge(
    jobs: QuerySet[Job], step: Step, *, now: datetime, batch_size: int, name: str
) -> ChargeRun:
    """Walk the open jobs in id order, a batch per transaction: lock the batch (skipping
    rows another charger holds), lock its ledger accounts in id order, charge every due job in
    one billing call, and write the jobs back in one statement."""
    run, cursor, started = ChargeRun(), 0, time.monotonic()
    claimed = (
        jobs.select_for_update(skip_locked=True, of=("self",))
        .only(*_CHARGING_COLUMNS)
        .order_by("pk")
    )
    while True:
        with transaction.atomic():
            batch = list(claimed.filter(pk__gt=cursor)[:batch_size])
            if not batch:
                break
            cursor = batch[-1].pk
            charges.charge_accounts_lock(sorted({job.project_id for job in batch}))
            rates = Rates(now, lab_ids={job.lab_id for job in batch})
            before = {job.pk: job.charged_amount for job in batch}
            running, failed = [], set()
            for job in batch:
                try:
                    order = step(job, now, rates)
                except (UsageError, InsufficientFundsError) as exc:
                    # Nothing of it was written (its close ran in a savepoint): skip this job
                    # only, logged; the next run tries it again.
                    logger.error("%s: job %s not charged: %s", name, job.uuid, exc.message)
                    failed.add(job.pk)
                    continue
                if order is not None:
                    running.append((job, order))
            for job, result in zip(*_orders_post(running, failed, name=name), strict=True):
                job.charged_amount += result.charged
                job.last_charged_at = now
            changed = [
                job
                for job in batch
                if job.pk not in failed and (job.charged_amount != before[job.pk] or job.closed_at)
            ]
            closed = [job for job in changed if job.closed_at == now]
            _jobs_write_back(changed, now)
            run.batches += 1
            run.jobs_seen += len(batch)
            run.jobs_failed += len(failed)
            run.jobs_charged += len(running) - len(failed & {job.pk for job, _ in running})
            run.jobs_closed += len(closed)
            run.amount += sum((job.charged_amount - before[job.pk] for job in changed), ZERO)
    run.seconds = time.monotonic() - started
    if run.jobs_seen:
        logger.info("%s: %s", name, run)
    return run


# What the chargers read of a job; a closing job loads its project when it needs it.
_CHARGING_COLUMNS = [
    "uuid", "lab_id", "project_id", "service_id", "price_id", "kind", "reservation_params",
    "usage_params", "started_at", "last_alive_at", "last_charged_at", "finished_at",
    "expired_at", "closed_at", "charged_amount",
]  # fmt: skip


def _orders_post(
    running: list[tuple[Job, charges.ChargeOrder]], failed: set[int], *, name: str
) -> tuple[list[Job], list[charges.ChargeResult]]:
    """Charge the batch's running jobs in one billing call; should one of them be impossible to
    charge (a lab that never had credits), charge them one by one, each in a savepoint, and
    add the ones that fail to `failed`. Returns the jobs charged and their results."""
    try:
        with transaction.atomic():
            results = charges.usage_charges_post(orders=[order for _, order in running])
        return [job for job, _ in running], results
    except InsufficientFundsError:
        pass
    jobs, results = [], []
    for job, order in running:
        try:
            with transaction.atomic():
                results += charges.usage_charges_post(orders=[order])
            jobs.append(job)
        except InsufficientFundsError as exc:
            logger.error("%s: job %s not charged: %s", name, job.uuid, exc.message)
            failed.add(job.pk)
    return jobs, results


def _open(kind: str) -> QuerySet[Job]:
    # Served by the partial index job_charge_queue.
    return Job.objects.filter(kind=kind, started_at__isnull=False, closed_at__isnull=True)


def longrun_jobs_charge(
    *, now: datetime | None = None, batch_size: int = 1000, jobs: QuerySet[Job] | None = None
) -> ChargeRun:
    """Charge every open long-running job: the increment of a running one (at least
    LONGRUN_MIN_CHARGE_INTERVAL_SECONDS since its last charge and MIN_CHARGE_AMOUNT), the final
    charge of a finished one, and the close of one whose heartbeats stopped for
    LONGRUN_EXPIRY_SECONDS (charged up to that expiry, its hold released)."""
    scope = _open(ServiceType.LONGRUN) if jobs is None else jobs & _open(ServiceType.LONGRUN)
    return _jobs_charge(
        scope, _longrun_step, now=now or timezone.now(), batch_size=batch_size,
        name="longrun_jobs_charge",
    )  # fmt: skip


def storage_jobs_charge(
    *, now: datetime | None = None, batch_size: int = 1000, jobs: QuerySet[Job] | None = None
) -> ChargeRun:
    """Charge every open storage interval up to now (at most every
    STORAGE_MIN_CHARGE_INTERVAL_SECONDS, at least MIN_CHARGE_AMOUNT), at the current price."""
    scope = _open(ServiceType.STORAGE) if jobs is None else jobs & _open(ServiceType.STORAGE)
    return _jobs_charge(
        scope, _storage_step, now=now or timezone.now(), batch_size=batch_size,
        name="storage_jobs_charge",
    )  # fmt: skip


def longrun_charge(*, job: Job, now: datetime | None = None) -> Decimal:
    """One job's charging step (the worker's, for one job). Returns the amount it moved."""
    return longrun_jobs_charge(now=now, jobs=Job.objects.filter(pk=job.pk)).amount


def storage_charge(*, job: Job, now: datetime | None = None) -> Decimal:
    return storage_jobs_charge(now=now, jobs=Job.objects.filter(pk=job.pk)).amount
