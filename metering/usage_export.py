"""A lab's usage as CSV, for the window its usage page shows: every job closed in it, or the
page's sums per hour or day, project and service (the rollups, batch events included)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from django.db.models import QuerySet, Sum

from accounts.models import Lab
from metering.models import Job, UsageRollup
from metering.rollups import job_units
from metering.usage_summary import Window

JOBS_HEADER = (
    "closed_at", "job_id", "project", "project_id", "service", "type", "name",
    "started_at", "finished_at", "units", "unit", "credits", "outcome",
)  # fmt: skip
SUMMARY_HEADER = (
    "period_start", "period", "project", "project_id", "service", "units", "unit",
    "credits", "charges", "jobs_closed",
)  # fmt: skip
_JOB_FIELDS = (
    "closed_at", "uuid", "project__name", "project__uuid", "service__slug",
    "service__unit_label", "kind", "name", "started_at", "finished_at", "usage_params",
    "charged_amount", "expired_at",
)  # fmt: skip
_SUMMARY_GROUP = (
    "period_start", "project__name", "project__uuid", "service__slug", "service__unit_label",
)  # fmt: skip


# One download streams at most this many jobs (about ten seconds on a small server, well
# inside its worker timeout); a longer window is refused with a pointer to a shorter one or to
# the summary, rather than cut off.
MAX_JOBS = 100_000


def _jobs(lab: Lab, window: Window) -> QuerySet[Job]:
    return Job.objects.filter(lab=lab, closed_at__gte=window.start, closed_at__lt=window.end)


def jobs_count(lab: Lab, window: Window) -> int:
    return _jobs(lab, window).count()


def jobs_rows(lab: Lab, window: Window) -> Iterator[Sequence[object]]:
    """The lab's jobs closed in the window, oldest first: what each used and was charged."""
    jobs = _jobs(lab, window)
    for job in jobs.order_by("closed_at", "id").values(*_JOB_FIELDS).iterator(chunk_size=2000):
        yield (
            job["closed_at"], job["uuid"], job["project__name"], job["project__uuid"],
            job["service__slug"], job["kind"], job["name"], job["started_at"],
            job["finished_at"], job_units(job), job["service__unit_label"],
            job["charged_amount"], "expired" if job["expired_at"] else "finished",
        )  # fmt: skip


def summary_rows(lab: Lab, window: Window) -> Iterator[Sequence[object]]:
    """The usage page's sums: one row per period, project and service, oldest first."""
    rollups = UsageRollup.objects.filter(
        lab=lab, period=window.period, period_start__gte=window.start, period_start__lt=window.end
    )
    sums = (
        rollups.values(*_SUMMARY_GROUP)
        .annotate(
            units_sum=Sum("units"),
            credits=Sum("amount"),
            charges_sum=Sum("charges"),
            jobs=Sum("jobs_closed"),
        )
        .order_by("period_start", "project__name", "project__uuid", "service__slug")
    )
    for row in sums:
        yield (
            row["period_start"], window.period, row["project__name"], row["project__uuid"],
            row["service__slug"] or "", row["units_sum"], row["service__unit_label"] or "",
            row["credits"], row["charges_sum"], row["jobs"],
        )  # fmt: skip
