"""A key's credit cap: what it spent (charges, and holds of open authorizations) in the current
period, changed only by conditional updates on the key's row, so that concurrent authorizations
of one key can never pass the cap together. A charge counts in the period it settles in, a hold
in the period it was made; a new period starts from zero."""

from __future__ import annotations

import contextlib
import uuid as uuid_lib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from accounts.models import ServiceToken
from core.db import execute_prepared
from keys import ratelimit
from keys.models import ALL_SERVICES, ApiKey, CreditPeriod, KeyJob
from metering import usage
from metering.models import Job


def cap_period_start(period: str, now: datetime) -> datetime | None:
    """The start of the cap period holding `now` (UTC; weeks start on Monday); None: a cap
    that never resets."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == CreditPeriod.DAILY:
        return day
    if period == CreditPeriod.WEEKLY:
        return day - timedelta(days=day.weekday())
    if period == CreditPeriod.MONTHLY:
        return day.replace(day=1)
    return None


def _period_start_sql(now: str) -> str:
    """SQL for the start of the row's cap period at `now` (a parameter), as cap_period_start
    computes it, from the row's own period kind: decided under the row's lock, so that a kind
    just changed by an edit (keys.services.key_update) is never mixed with a start computed
    from the old one. NULL: a cap that never resets."""
    return f"""(CASE credit_limit_period
        WHEN 'daily' THEN date_trunc('day', {now}::timestamptz, 'UTC')
        WHEN 'weekly' THEN date_trunc('week', {now}::timestamptz, 'UTC')
        WHEN 'monthly' THEN date_trunc('month', {now}::timestamptz, 'UTC') END)"""


def _used_sql(period: str) -> str:
    """credit_used as of `period`: nothing yet if `period` began after the row's period, else
    what the row holds. A period never moves back: a request that computed yesterday's period
    and commits after today's first one counts in today's."""
    return f"""CASE WHEN {period} > credit_period_start
                   OR (credit_period_start IS NULL AND {period} IS NOT NULL)
                 THEN 0 ELSE credit_used END"""


_NOW = _period_start_sql("%(now)s")
_AT = _period_start_sql("%(at)s")

_REMAINING = f"""
SELECT credit_limit - {_used_sql(_NOW)} FROM keys_apikey WHERE id = %(id)s
"""  # noqa: S608

# Replaces a job's hold by its charge. The hold is taken off only if the row is still in the
# period the hold was counted in (%(held_in)s); after a new period began, the charge alone counts
# in it. Decided under the row's lock, not from a clock read before waiting for it.
_ADJUST = f"""
UPDATE keys_apikey
   SET credit_used = {_used_sql(_NOW)}
                 + CASE WHEN GREATEST(credit_period_start, {_NOW})
                             IS NOT DISTINCT FROM %(held_in)s::timestamptz
                        THEN %(charged)s - %(held)s ELSE %(charged)s END,
       credit_period_start = GREATEST(credit_period_start, {_NOW})
 WHERE id = %(id)s AND credit_limit IS NOT NULL
"""  # noqa: S608


# Counts the hold against the cap (keys with one: `limited`) and records the job as the key's,
# in one statement, or writes nothing when the cap does not cover the amount. It runs last in
# keys.hold_function: after the job's INSERT (which it reads) and the ledger's account locks,
# so that the key's row is locked after the accounts, as settling a job locks them. A cap
# removed since the key was read (credit_limit NULL) no longer refuses.
CAP_AND_KEY_JOB = f"""
WITH cap AS (
    UPDATE keys_apikey
       SET credit_used = {_used_sql(_AT)} + %(held)s,
           credit_period_start = GREATEST(credit_period_start, {_AT})
     WHERE id = %(key)s AND %(limited)s
       AND (credit_limit IS NULL OR {_used_sql(_AT)} + %(held)s <= credit_limit)
    RETURNING credit_limit - credit_used AS remaining, credit_period_start AS counted_in
)
INSERT INTO keys_keyjob
       (job_id, key_id, service_slug, estimated_units, cap_held, cap_period_start, created_at,
        request_fingerprint)
SELECT job.id, %(key)s, %(slug)s, %(units)s, %(held)s,
       CASE WHEN %(limited)s THEN (SELECT counted_in FROM cap)
            ELSE (SELECT {_AT} FROM keys_apikey WHERE id = %(key)s) END,
       %(at)s, ''
  FROM metering_job job
 WHERE job.uuid = %(job)s AND (NOT %(limited)s OR EXISTS (SELECT FROM cap))
RETURNING (SELECT remaining FROM cap)
"""  # noqa: S608


def keys_locked(keys: QuerySet[ApiKey]) -> list[int]:
    """Lock these keys' rows in id order, as every statement that changes several keys must
    (one in its scan order and another in its own would deadlock); NO KEY, so that new
    KeyJobs' foreign-key checks on them do not wait. Returns their ids."""
    locked = keys.order_by("pk").select_for_update(no_key=True, of=("self",))
    return list(locked.values_list("pk", flat=True))


def cap_recounted(key_id: int, period_start: datetime | None) -> Decimal:
    """What a cap that starts counting now, in the period from `period_start` (None: ever),
    holds as spent, read under the key's row lock: the charges its jobs settled in the period,
    and the holds of its open jobs that their settlement will take off (_ADJUST takes a hold
    off only when it was counted in the row's period: its cap_period_start). The other open
    jobs add their charge when they settle, as if their holds had never been counted."""
    jobs = KeyJob.objects.filter(key_id=key_id)
    settled = jobs.filter(settled_at__isnull=False)
    if period_start is not None:
        settled = settled.filter(settled_at__gte=period_start)
    charged = settled.aggregate(total=Sum("charged"))["total"] or Decimal(0)
    held = jobs.filter(
        settled_at__isnull=True, released_at__isnull=True, cap_period_start=period_start
    ).aggregate(total=Sum("cap_held"))["total"]
    return charged + (held or Decimal(0))


def cap_remaining(key_id: int, now: datetime) -> Decimal:
    rows = execute_prepared(_REMAINING, {"id": key_id, "now": now})
    return rows[0][0] if rows and rows[0][0] is not None else Decimal(0)


def _cap_adjust(key_job: KeyJob, charged: Decimal, now: datetime) -> None:
    """Replace the job's hold by what it was charged (see _ADJUST)."""
    execute_prepared(
        _ADJUST,
        {
            "id": key_job.key_id,
            "now": now,
            "held_in": key_job.cap_period_start,
            "held": key_job.cap_held,
            "charged": charged,
        },
    )


@transaction.atomic
def key_job_settle(*, key_job: KeyJob, units: int, charged: Decimal) -> KeyJob:
    """Record the job's actual units and charge, and move the key's cap from the hold to the
    charge. A settled job is left as it is (the caller checked the replay)."""
    key_job = (
        KeyJob.objects.select_for_update(of=("self",)).select_related("key").get(pk=key_job.pk)
    )
    if key_job.settled_at is not None:
        return key_job
    now = timezone.now()
    _cap_adjust(key_job, charged, now)
    key_job.units, key_job.charged, key_job.settled_at = units, charged, now
    key_job.save(update_fields=["units", "charged", "settled_at"])
    return key_job


def key_jobs_release(*, now: datetime | None = None, batch: int = 500) -> int:
    """Bring the caps of authorized jobs closed elsewhere up to date: a job cancelled or expired
    unused gives its hold back (its credits went back to the project with the reservation); a
    job whose usage was posted on /api/accounting/ counts its charge instead of the hold. Safe
    to run twice."""
    now = now or timezone.now()
    done = 0
    with transaction.atomic():
        key_jobs = list(
            KeyJob.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("key", "job")
            .filter(settled_at__isnull=True, released_at__isnull=True)
            .filter(Q(job__cancelled_at__isnull=False) | Q(job__closed_at__isnull=False))
            .order_by("created_at")[:batch]
        )
        keys_locked(ApiKey.objects.filter(pk__in={key_job.key_id for key_job in key_jobs}))
        for key_job in key_jobs:
            if key_job.job.cancelled_at is not None:
                _cap_adjust(key_job, Decimal(0), now)
                key_job.released_at = now
            else:
                charged = key_job.job.charged_amount
                _cap_adjust(key_job, charged, now)
                key_job.units = int((key_job.job.usage_params or {}).get("count") or 0)
                key_job.charged, key_job.settled_at = charged, now
            done += 1
        KeyJob.objects.bulk_update(key_jobs, ["released_at", "units", "charged", "settled_at"])
    return done


def key_job_for(job_uuid: uuid_lib.UUID) -> KeyJob | None:
    return KeyJob.objects.select_related("key", "job").filter(job__uuid=job_uuid).first()


def key_job_usage_record(*, key_job: KeyJob, units: int, token: ServiceToken) -> Job:
    """Settle an authorized job with its actual units, like oneshot usage (the hold first, the
    project for any excess, the rest released), and move the key's cap from the hold to the
    charge, in one transaction; after it commits, the units/min window takes the actual units.
    The same units again answer the same; other units are JobAlreadyFinishedError (409)."""
    with transaction.atomic():
        job = usage.oneshot_usage_record(
            job_uuid=key_job.job.uuid,
            project=key_job.job.project,
            subtype=key_job.service_slug,
            count=units,
            at=timezone.now(),
            actor=token,
        )
        key_job = key_job_settle(key_job=key_job, units=units, charged=job.charged_amount)
        transaction.on_commit(lambda: _window_correct(key_job, units))
    return job


def _window_correct(key_job: KeyJob, units: int) -> None:
    # Redis down: the estimate stays counted until it leaves the window, within a minute.
    with contextlib.suppress(ratelimit.RateLimiterUnavailable):
        ratelimit.units_correct(
            key_id=key_job.key_id,
            scopes=[ALL_SERVICES, key_job.service_slug],
            member=str(key_job.job.uuid),
            units=units,
        )
