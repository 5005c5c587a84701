"""Reads behind the accounting-service's job reports and open long-running jobs.

Every read goes through the acting token: a global token sees every lab, a lab-bound one only
its own. A page costs two queries (a count and the rows, with their lab, project and service
joined), whatever its size; a page past the end costs only the count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.db.models import QuerySet

from accounts.errors import LabNotFoundError, ProjectNotFoundError
from accounts.models import Lab, Project, ServiceToken
from accounts.selectors import Actor, lab_list, project_list
from metering.models import Job, ServiceType

# The newest closed jobs first (the job_report_* indexes), `id` breaking ties.
REPORT_ORDER = ("-started_at", "id")
# The oldest open long-running jobs first (the job_longrun_open index).
LONGRUN_OPEN_ORDER = ("created_at", "id")


@dataclass(frozen=True)
class Page:
    items: Sequence[Job]
    page: int
    page_size: int
    total_items: int

    @property
    def total_pages(self) -> int:
        return math.ceil(self.total_items / self.page_size)


def _paginate(jobs: QuerySet[Job], *, page: int, page_size: int) -> Page:
    if page < 1 or page_size < 1:
        raise ValueError("page and page_size start at 1")
    total = jobs.count()
    offset = (page - 1) * page_size
    # Past the end there is nothing to read (and a huge offset would overflow the database).
    items = list(jobs[offset : offset + page_size]) if offset < total else []
    return Page(items=items, page=page, page_size=page_size, total_items=total)


def _visible(jobs: QuerySet[Job], *, actor: Actor) -> QuerySet[Job]:
    if isinstance(actor, ServiceToken) and actor.lab_id is None:
        return jobs  # every lab: no filter, so job_report_all / job_longrun_open serve the order
    return jobs.filter(lab__in=lab_list(actor=actor))


def job_report_page(
    *,
    actor: Actor,
    lab: Lab | None = None,
    project: Project | None = None,
    page: int,
    page_size: int,
) -> Page:
    """Closed jobs (charged for good) the actor may see, of one project, one lab or everyone,
    the newest first. A lab or project the actor cannot see raises its 404."""
    jobs = Job.objects.filter(closed_at__isnull=False)
    if project is not None:
        if not project_list(actor=actor).filter(pk=project.pk).exists():
            raise ProjectNotFoundError()
        jobs = jobs.filter(project=project)
    elif lab is not None:
        if not lab_list(actor=actor).filter(pk=lab.pk).exists():
            raise LabNotFoundError()
        jobs = jobs.filter(lab=lab)
    else:
        jobs = _visible(jobs, actor=actor)
    jobs = jobs.select_related("lab", "project", "service").order_by(*REPORT_ORDER)
    return _paginate(jobs, page=page, page_size=page_size)


def longrun_open_page(
    *, actor: Actor, subtype: str | None = None, page: int, page_size: int
) -> Page:
    """Long-running jobs neither finished nor cancelled, reserved-but-not-started ones included,
    the oldest first; `subtype` keeps one service subtype only."""
    jobs = Job.objects.filter(
        kind=ServiceType.LONGRUN, finished_at__isnull=True, cancelled_at__isnull=True
    )
    if subtype is not None:
        jobs = jobs.filter(service__slug=subtype)
    jobs = _visible(jobs, actor=actor)
    jobs = jobs.select_related("lab", "project", "service").order_by(*LONGRUN_OPEN_ORDER)
    return _paginate(jobs, page=page, page_size=page_size)
