"""What a lab used and spent over a window, read from the usage rollups (metering/rollups.py,
rebuilt every minute by the worker) and its latest closed jobs: the lab's usage page."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from dateutil.relativedelta import relativedelta
from django.db.models import Sum

from accounts.models import Lab, Project
from core.money import credits_display, decimal_rounded
from metering.models import Job, RollupPeriod, Service, UsageRollup
from metering.units import units_plural

ZERO = Decimal(0)
RECENT_JOBS = 20


@dataclass(frozen=True)
class Window:
    key: str
    label: str
    period: str  # RollupPeriod
    start: datetime
    end: datetime  # the start of the period after the current one


def usage_window(key: str, now: datetime) -> Window:
    """The last 24 hours by hour, this calendar month (UTC) by day, or, by default, the last
    30 days by day."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    day = hour.replace(hour=0)
    next_hour, next_day = hour + timedelta(hours=1), day + timedelta(days=1)
    if key == "24h":
        start = hour - timedelta(hours=23)
        return Window("24h", "Last 24 hours", RollupPeriod.HOUR, start, next_hour)
    if key == "month":
        return Window("month", f"{now:%B %Y}", RollupPeriod.DAY, day.replace(day=1), next_day)
    return Window("30d", "Last 30 days", RollupPeriod.DAY, day - timedelta(days=29), next_day)


WINDOW_KEYS = ("24h", "30d", "month")


def month_window(year: int, month: int) -> Window:
    """A whole calendar month (UTC), by day."""
    start = datetime(year, month, 1, tzinfo=UTC)
    end = start + relativedelta(months=1)
    return Window(f"{year:04}-{month:02}", f"{start:%B %Y}", RollupPeriod.DAY, start, end)


@dataclass
class ServiceUsage:
    service: Service | None  # None: charges not tied to a service (e.g. a manual charge)
    credits: Decimal = ZERO
    units: Decimal = ZERO
    jobs: int = 0

    @property
    def units_text(self) -> str:
        """12,000 tokens; with a display unit, in it: 0.5 GiB-month."""
        service = self.service
        if service is None or not self.units:
            return "—"
        if service.display_unit and service.display_scale > 0:
            amount = decimal_rounded(self.units / service.display_scale, 4)
            return f"{amount} {service.display_unit}"
        unit = service.unit_label if self.units == 1 else units_plural(service.unit_label)
        return f"{self.units:,} {unit}"


@dataclass
class ProjectUsage:
    project: Project
    services: list[ServiceUsage] = field(default_factory=list)

    @property
    def credits(self) -> Decimal:
        return sum((row.credits for row in self.services), ZERO)


@dataclass(frozen=True)
class Bar:
    start: datetime
    credits: Decimal
    percent: int  # of the window's highest bar, for the chart's width


@dataclass(frozen=True)
class JobRow:
    job: Job
    charged: str  # 0.01, 79.50, 0.000123


@dataclass(frozen=True)
class LabUsage:
    window: Window
    credits: Decimal
    jobs: int
    by_service: list[ServiceUsage]
    by_project: list[ProjectUsage]
    bars: list[Bar]
    recent_jobs: list[JobRow]  # the latest closed, newest first


def lab_usage(*, lab: Lab, window: Window, recent_jobs: bool = True) -> LabUsage:
    """For a lab the caller has already been allowed to see; `recent_jobs`: with its latest
    closed jobs (the page's table)."""
    rollups = UsageRollup.objects.filter(
        lab=lab, period=window.period, period_start__gte=window.start, period_start__lt=window.end
    )
    sums = rollups.values("project_id", "service_id").annotate(
        credits=Sum("amount"), units=Sum("units"), jobs=Sum("jobs_closed")
    )
    services = Service.objects.in_bulk({row["service_id"] for row in sums} - {None})
    projects = {p.pk: ProjectUsage(p) for p in lab.projects.order_by("name", "id")}
    by_service: dict[int | None, ServiceUsage] = {}
    for row in sums:
        service = services.get(row["service_id"])
        usage = ServiceUsage(service, row["credits"], row["units"], row["jobs"])
        if row["project_id"] in projects:
            projects[row["project_id"]].services.append(usage)
        total = by_service.setdefault(row["service_id"], ServiceUsage(service))
        total.credits += usage.credits
        total.units += usage.units
        total.jobs += usage.jobs
    for project in projects.values():
        project.services.sort(key=lambda row: -row.credits)
    per_period = dict(
        rollups.values_list("period_start").annotate(credits=Sum("amount")).order_by()
    )
    return LabUsage(
        window=window,
        credits=sum((row.credits for row in by_service.values()), ZERO),
        jobs=sum(row.jobs for row in by_service.values()),
        by_service=sorted(
            by_service.values(),
            key=lambda row: (-row.credits, row.service.slug if row.service else ""),
        ),
        by_project=sorted(projects.values(), key=lambda row: (-row.credits, row.project.name)),
        bars=_bars(window, per_period),
        recent_jobs=_recent_jobs(lab) if recent_jobs else [],
    )


def _recent_jobs(lab: Lab) -> list[JobRow]:
    # The latest started of the closed jobs (the report's index), shown by when they closed.
    jobs = (
        Job.objects.filter(lab=lab, closed_at__isnull=False)
        .select_related("project", "service")
        .order_by("-started_at", "id")[:RECENT_JOBS]
    )
    newest_first = sorted(jobs, key=lambda job: job.closed_at, reverse=True)
    return [JobRow(job, credits_display(job.charged_amount)) for job in newest_first]


def _bars(window: Window, per_period: dict[datetime, Decimal]) -> list[Bar]:
    step = timedelta(hours=1) if window.period == RollupPeriod.HOUR else timedelta(days=1)
    starts, moment = [], window.start
    while moment < window.end:
        starts.append(moment)
        moment += step
    highest = max((per_period.get(start, ZERO) for start in starts), default=ZERO)
    return [
        Bar(
            start,
            per_period.get(start, ZERO),
            max(0, int(per_period.get(start, ZERO) * 100 / highest)) if highest > 0 else 0,
        )
        for start in starts
    ]
