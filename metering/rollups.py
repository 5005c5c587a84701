"""Usage rollups: hourly and daily sums per project and service that dashboards and reports
read instead of the journal and raw events.

Each run rebuilds the periods that may still change (the last LOOKBACK_HOURS hours and the
days they touch) from their sources, in one transaction: running it twice gives the same rows,
and a run killed midway leaves the previous ones.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone
from redis import RedisError

from billing import selectors as billing_selectors
from metering.models import (
    Job,
    RollupPeriod,
    Service,
    ServiceType,
    UsageEvent,
    UsageEventOutcome,
    UsageRollup,
)

logger = logging.getLogger(__name__)

LOOKBACK_HOURS = 2  # charges are written as they happen; late ones land within a run or two
# Where the last run stopped (in the cache): after a worker outage the next run starts there,
# up to MAX_CATCH_UP back, so the hours it missed are built too.
BUILT_UNTIL = "metering:usage_rollup:built_until"
MAX_CATCH_UP = timedelta(days=35)


@dataclass
class _Sums:
    lab_id: int
    amount: Decimal = Decimal(0)
    charges: int = 0
    jobs_closed: int = 0
    units: int = 0


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def job_units(job: dict) -> int:
    """What a closed job used, in its service's unit: tokens, instance-seconds, byte-seconds."""
    params = job["usage_params"] or {}
    if job["kind"] == ServiceType.ONESHOT:
        return int(params.get("count") or 0)
    seconds = int((job["finished_at"] - job["started_at"]).total_seconds())
    per_second = (
        params.get("instances") if job["kind"] == ServiceType.LONGRUN else params.get("size")
    )
    return int(per_second or 0) * max(seconds, 0)


def _hourly(start: datetime, end: datetime) -> dict[tuple[datetime, int, int | None], _Sums]:
    sums: dict[tuple[datetime, int, int | None], _Sums] = {}

    def row(period: datetime, project_id: int, service_id: int | None, lab_id: int) -> _Sums:
        return sums.setdefault((period, project_id, service_id), _Sums(lab_id=lab_id))

    charged = billing_selectors.charges_by_hour(start=start, end=end)
    job_services = dict(
        Job.objects.filter(uuid__in={c.job_uuid for c in charged if c.job_uuid}).values_list(
            "uuid", "service_id"
        )
    )
    services = {
        (slug, kind): pk for pk, slug, kind in Service.objects.values_list("pk", "slug", "type")
    }
    for charge in charged:
        service_id = (
            job_services.get(charge.job_uuid)
            if charge.job_uuid
            else services.get((charge.service_slug, charge.service_type))
        )
        sums_row = row(charge.period, charge.project_id, service_id, charge.lab_id)
        sums_row.amount += charge.amount
        sums_row.charges += charge.charges
    closed = Job.objects.filter(closed_at__gte=start, closed_at__lt=end).values(
        "closed_at", "project_id", "lab_id", "service_id", "kind", "usage_params",
        "started_at", "finished_at",
    )  # fmt: skip
    for job in closed:
        sums_row = row(
            _floor_hour(job["closed_at"]), job["project_id"], job["service_id"], job["lab_id"]
        )
        sums_row.jobs_closed += 1
        sums_row.units += job_units(job)
    settled = (
        UsageEvent.objects.filter(
            outcome=UsageEventOutcome.ACCEPTED, settled_at__gte=start, settled_at__lt=end
        )
        .annotate(hour=TruncHour("settled_at", tzinfo=UTC))
        .values_list("hour", "project_id", "service_id", "project__lab_id")
        .annotate(units=Sum("units"))
    )
    for hour, project_id, service_id, lab_id, units in settled:
        row(hour, project_id, service_id, lab_id).units += units
    return sums


def _start(now: datetime) -> datetime:
    """LOOKBACK_HOURS back; further, to where the last run stopped, if it stopped earlier."""
    start = _floor_hour(now) - timedelta(hours=LOOKBACK_HOURS)
    try:
        built_until = cache.get(BUILT_UNTIL)
    except RedisError:  # the lookback alone, as before the watermark
        logger.warning("usage_rollup: the cache did not answer; building the lookback only")
        return start
    if built_until is None or built_until >= start:
        return start
    earliest = _floor_hour(now - MAX_CATCH_UP)
    return max(_floor_hour(built_until) - timedelta(hours=LOOKBACK_HOURS), earliest)


def _built(until: datetime) -> None:
    with contextlib.suppress(RedisError):
        if (cache.get(BUILT_UNTIL) or until) <= until:
            cache.set(BUILT_UNTIL, until, timeout=None)


def usage_rollup(*, now: datetime | None = None) -> int:
    """Rebuild the hourly rollups of the last LOOKBACK_HOURS hours (from where the last run
    stopped, after an outage) and the daily rollups of the days they touch. Returns how many
    rows were written."""
    now = now or timezone.now()
    start = _start(now)  # a cache read: before the transaction, not inside it
    end = _floor_hour(now) + timedelta(hours=1)
    return _rebuilt(start, end)


# Two runs at once (an overlapping beat, two workers) would delete and insert the same rows.
_ONE_RUN = "SELECT pg_try_advisory_xact_lock(hashtextextended('metering.usage_rollup', 0))"


@transaction.atomic
def _rebuilt(start: datetime, end: datetime) -> int:
    with connection.cursor() as cursor:
        cursor.execute(_ONE_RUN)
        if not cursor.fetchone()[0]:
            logger.info("usage_rollup: another run is building; this one skips")
            return 0
    transaction.on_commit(lambda: _built(end))
    hourly = _hourly(start, end)
    UsageRollup.objects.filter(
        period=RollupPeriod.HOUR, period_start__gte=start, period_start__lt=end
    ).delete()
    UsageRollup.objects.bulk_create(
        UsageRollup(
            period=RollupPeriod.HOUR,
            period_start=period,
            project_id=project_id,
            service_id=service_id,
            lab_id=sums.lab_id,
            amount=sums.amount,
            charges=sums.charges,
            jobs_closed=sums.jobs_closed,
            units=sums.units,
        )
        for (period, project_id, service_id), sums in hourly.items()
    )
    day_start = start.replace(hour=0)
    hours_of_days = (
        UsageRollup.objects.filter(
            period=RollupPeriod.HOUR,
            period_start__gte=day_start,
            period_start__lt=end.replace(hour=0) + timedelta(days=1),  # the days rebuilt
        )
        .annotate(day=TruncDay("period_start", tzinfo=UTC))
        .values("day", "project_id", "service_id", "lab_id")
        .annotate(
            total=Sum("amount"), n=Sum("charges"), closed=Sum("jobs_closed"), used=Sum("units"),
            rows=Count("id"),
        )
    )  # fmt: skip
    day_end = end.replace(hour=0) + timedelta(days=1)
    UsageRollup.objects.filter(
        period=RollupPeriod.DAY, period_start__gte=day_start, period_start__lt=day_end
    ).delete()
    daily = UsageRollup.objects.bulk_create(
        UsageRollup(
            period=RollupPeriod.DAY,
            period_start=row["day"],
            project_id=row["project_id"],
            service_id=row["service_id"],
            lab_id=row["lab_id"],
            amount=row["total"],
            charges=row["n"],
            jobs_closed=row["closed"],
            units=row["used"],
        )
        for row in hours_of_days
    )
    written = len(hourly) + len(daily)
    logger.info(
        "usage_rollup: %s hourly and %s daily row(s) from %s", len(hourly), len(daily), start
    )
    return written
