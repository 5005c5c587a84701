"""Accounting-service job reports and open long-running jobs (/api/accounting/report/...,
/api/accounting/job/longrun/open): paginated as the reference paginates.

A page is `{"items", "meta": {"page", "page_size", "total_pages", "total_items"}, "links":
{"self", "prev", "next", "first", "last"}}`; the links are the request URL with `page=` set.
`page_size` above MAX_PAGE_SIZE is served as MAX_PAGE_SIZE (and `meta.page_size` says so).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from billing.api import AccountingTokenView, GlobalTokenView
from core.accounting import UUIDField, envelope, enveloped
from core.errors import ApiError
from metering import reports
from metering.constants import SUBTYPES
from metering.models import Job, ServiceType

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 1000
_INTEGER = re.compile(r"[+-]?[0-9]+")
INT_PARSING_MESSAGE = "Input should be a valid integer, unable to parse string as an integer"


class QueryValidationError(ApiError):
    """Invalid query parameters: the reference's 422, located in the query."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    error_code = "INVALID_REQUEST"
    default_message = "Validation error"


def _error(kind: str, name: str, message: str) -> dict[str, Any]:
    return {"type": kind, "loc": ["query", name], "msg": message}


def _positive_int(params: Any, name: str, default: int, errors: list[dict[str, Any]]) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    try:
        value = int(text) if _INTEGER.fullmatch(text) else None
    except ValueError:  # more digits than Python converts
        value = None
    if value is None:
        errors.append(_error("int_parsing", name, INT_PARSING_MESSAGE))
        return default
    if value < 1:
        errors.append(
            _error("greater_than_equal", name, "Input should be greater than or equal to 1")
        )
    return value


def _subtype(params: Any, errors: list[dict[str, Any]]) -> str | None:
    value = params.get("subtype")
    if value is None or value in SUBTYPES:
        return value
    choices = ", ".join(f"'{s}'" for s in SUBTYPES[:-1]) + f" or '{SUBTYPES[-1]}'"
    errors.append(_error("enum", "subtype", f"Input should be {choices}"))
    return None


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _with_page(url: str, page: int) -> str:
    """The URL with its `page` parameter set (moved last, as the reference's Starlette does)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "page"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("page", str(page))])))


class PaginatedView(AccountingTokenView):
    def pagination(self, errors: list[dict[str, Any]] | None = None) -> tuple[int, int]:
        """`page` and `page_size` from the query; a 422 if either is not a positive integer
        (with any `errors` found before)."""
        errors = [*(errors or [])]
        page = _positive_int(self.request.query_params, "page", 1, errors)
        page_size = _positive_int(self.request.query_params, "page_size", DEFAULT_PAGE_SIZE, errors)
        if errors:
            raise QueryValidationError(details=errors)
        return page, min(page_size, MAX_PAGE_SIZE)

    def paginated(self, page: reports.Page, items: list[dict[str, Any]]) -> dict[str, Any]:
        url = self.request.build_absolute_uri()
        return {
            "items": items,
            "meta": {
                "page": page.page,
                "page_size": page.page_size,
                "total_pages": page.total_pages,
                "total_items": page.total_items,
            },
            "links": {
                "self": url,
                "prev": _with_page(url, page.page - 1) if page.page > 1 else None,
                "next": _with_page(url, page.page + 1) if page.page < page.total_pages else None,
                "first": _with_page(url, 1),
                "last": _with_page(url, max(page.total_pages, 1)),
            },
        }


# Report items ----------------------------------------------------------------------------------


def _duration(job: Job) -> int:
    if job.started_at is None or job.finished_at is None:
        return 0
    return max(int((job.finished_at - job.started_at).total_seconds()), 0)


def report_item(job: Job, *, with_lab: bool, with_project: bool) -> dict[str, Any]:
    """One job as the reference reports it; null `name`/`group_id` are left out, as its
    `response_model_exclude_defaults` does, and `vlab_id`/`proj_id` only where asked for."""
    item: dict[str, Any] = {"job_id": str(job.uuid)}
    if job.kind != ServiceType.STORAGE:
        item["user_id"] = str(job.user_uuid) if job.user_uuid else None
        if job.name:
            item["name"] = job.name
        if job.group_uuid:
            item["group_id"] = str(job.group_uuid)
    if with_lab:
        item["vlab_id"] = str(job.lab.uuid)
    if with_project:
        item["proj_id"] = str(job.project.uuid)
    item |= {"type": job.kind, "subtype": job.service.slug}
    reserved = job.reservation_params or {}
    used = job.usage_params or {}
    if job.kind == ServiceType.ONESHOT:
        item |= {
            "reserved_at": _iso(job.reserved_at),
            "started_at": _iso(job.started_at),
            "amount": str(job.charged_amount),
            "count": int(used.get("count") or 0),
            "reserved_amount": str(job.reserved_amount),
            "reserved_count": int(reserved.get("count") or 0),
        }
    elif job.kind == ServiceType.LONGRUN:
        item |= {
            "reserved_at": _iso(job.reserved_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            # An expired job was ended by the charger: the reference records that as cancelled.
            "cancelled_at": _iso(job.cancelled_at or job.expired_at),
            "amount": str(job.charged_amount),
            "duration": _duration(job),
            "reserved_amount": str(job.reserved_amount),
            "reserved_duration": int(reserved.get("duration") or 0),
        }
    else:
        item |= {
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            "amount": str(job.charged_amount),
            "duration": _duration(job),
            "size": int(used.get("size") or 0),
        }
    return item


class _ReportItemOut(serializers.Serializer):
    job_id = UUIDField()
    vlab_id = UUIDField(required=False, help_text="System report only.")
    proj_id = UUIDField(required=False, help_text="System and virtual-lab reports.")
    subtype = serializers.ChoiceField(choices=SUBTYPES)
    started_at = serializers.DateTimeField()
    amount = serializers.CharField(help_text="Net cost of the job to its project.")


class _ReservedJobOut(_ReportItemOut):
    user_id = UUIDField(allow_null=True)
    name = serializers.CharField(required=False)
    group_id = UUIDField(required=False)
    reserved_at = serializers.DateTimeField(allow_null=True)
    reserved_amount = serializers.CharField()


class OneshotReportOut(_ReservedJobOut):
    type = serializers.ChoiceField(choices=[ServiceType.ONESHOT.value])
    count = serializers.IntegerField(min_value=0)
    reserved_count = serializers.IntegerField(min_value=0)


class LongrunReportOut(_ReservedJobOut):
    type = serializers.ChoiceField(choices=[ServiceType.LONGRUN.value])
    finished_at = serializers.DateTimeField()
    cancelled_at = serializers.DateTimeField(allow_null=True)
    duration = serializers.IntegerField(min_value=0)
    reserved_duration = serializers.IntegerField(min_value=0)


class StorageReportOut(_ReportItemOut):
    type = serializers.ChoiceField(choices=[ServiceType.STORAGE.value])
    finished_at = serializers.DateTimeField()
    duration = serializers.IntegerField(min_value=0)
    size = serializers.IntegerField(min_value=0)


class PageMetaOut(serializers.Serializer):
    page = serializers.IntegerField(min_value=1)
    page_size = serializers.IntegerField(min_value=1)
    total_pages = serializers.IntegerField(min_value=0)
    total_items = serializers.IntegerField(min_value=0)


class PageLinksOut(serializers.Serializer):
    self = serializers.CharField()
    prev = serializers.CharField(allow_null=True)
    next = serializers.CharField(allow_null=True)
    first = serializers.CharField()
    last = serializers.CharField()


class JobReportPageOut(serializers.Serializer):
    items = PolymorphicProxySerializer(
        component_name="JobReportOut",
        serializers={
            ServiceType.ONESHOT.value: OneshotReportOut,
            ServiceType.LONGRUN.value: LongrunReportOut,
            ServiceType.STORAGE.value: StorageReportOut,
        },
        resource_type_field_name="type",
        many=True,
    )
    meta = PageMetaOut()
    links = PageLinksOut()


PAGE_PARAMETERS = [
    OpenApiParameter("page", int, default=1, description="From 1."),
    OpenApiParameter(
        "page_size",
        int,
        default=DEFAULT_PAGE_SIZE,
        description=f"From 1; above {MAX_PAGE_SIZE}, {MAX_PAGE_SIZE}.",
    ),
]
REPORT_SCHEMA = {
    "responses": enveloped("JobReportEnvelope", JobReportPageOut()),
    "tags": ["accounting: reports"],
}


class ReportView(PaginatedView):
    def report(self, message: str, *, with_lab: bool, with_project: bool, **scope: Any) -> Response:
        page, page_size = self.pagination()
        result = reports.job_report_page(actor=self.token, page=page, page_size=page_size, **scope)
        items = [
            report_item(job, with_lab=with_lab, with_project=with_project) for job in result.items
        ]
        return envelope(message, self.paginated(result, items))


class SystemReportView(GlobalTokenView, ReportView):
    """Closed jobs of every lab, the newest first (a global token only)."""

    @extend_schema(parameters=PAGE_PARAMETERS, **REPORT_SCHEMA)
    def get(self, request: Request) -> Response:
        return self.report("Job report for system", with_lab=True, with_project=True)


class LabReportView(ReportView):
    """Closed jobs of one virtual lab, the newest first."""

    @extend_schema(
        parameters=[OpenApiParameter("vlab_id", OpenApiTypes.UUID, "path"), *PAGE_PARAMETERS],
        **REPORT_SCHEMA,
    )
    def get(self, request: Request, vlab_id: str) -> Response:
        lab = self.lab(self.path_uuid(vlab_id, "vlab_id"))
        return self.report(
            f"Job report for virtual-lab {lab.uuid}", with_lab=False, with_project=True, lab=lab
        )


class ProjectReportView(ReportView):
    """Closed jobs of one project, the newest first."""

    @extend_schema(
        parameters=[OpenApiParameter("proj_id", OpenApiTypes.UUID, "path"), *PAGE_PARAMETERS],
        **REPORT_SCHEMA,
    )
    def get(self, request: Request, proj_id: str) -> Response:
        project = self.project(self.path_uuid(proj_id, "proj_id"))
        return self.report(
            f"Job report for project {project.uuid}",
            with_lab=False,
            with_project=False,
            project=project,
        )


# Open long-running jobs ------------------------------------------------------------------------


class OpenJobOut(serializers.Serializer):
    id = UUIDField()
    vlab_id = UUIDField()
    proj_id = UUIDField()
    service_subtype = serializers.ChoiceField(choices=SUBTYPES)
    started_at = serializers.DateTimeField(allow_null=True)
    last_alive_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class OpenJobPageOut(serializers.Serializer):
    items = OpenJobOut(many=True)
    meta = PageMetaOut()
    links = PageLinksOut()


def open_job_item(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.uuid),
        "vlab_id": str(job.lab.uuid),
        "proj_id": str(job.project.uuid),
        "service_subtype": job.service.slug,
        "started_at": _iso(job.started_at),
        "last_alive_at": _iso(job.last_alive_at),
        "created_at": _iso(job.created_at),
    }


class LongrunOpenView(PaginatedView):
    """Long-running jobs neither finished nor cancelled (reserved but not started included),
    the oldest first; a lab-bound token sees its own lab's only."""

    @extend_schema(
        parameters=[
            OpenApiParameter("subtype", str, enum=SUBTYPES, description="Only this subtype."),
            *PAGE_PARAMETERS,
        ],
        responses=enveloped("OpenLongrunJobsEnvelope", OpenJobPageOut()),
        tags=["accounting: reports"],
    )
    def get(self, request: Request) -> Response:
        errors: list[dict[str, Any]] = []
        subtype = _subtype(request.query_params, errors)
        page, page_size = self.pagination(errors)
        result = reports.longrun_open_page(
            actor=self.token, subtype=subtype, page=page, page_size=page_size
        )
        return envelope(
            "Open longrun jobs", self.paginated(result, [open_job_item(j) for j in result.items])
        )
