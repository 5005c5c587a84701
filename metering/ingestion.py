"""Batch usage ingestion (`POST /api/v1/usage/events`).

Ingestion checks every event of a batch, writes them all (accepted or rejected) in one
statement that skips ids the token already used, and answers each event's outcome; a resent
event gets its first outcome back. Nothing is charged here: metering/settlement.py charges
accepted events, summed per project and service. So ingestion costs a handful of queries per
batch, not a ledger entry per event.
"""

from __future__ import annotations

import json
import logging
import re
import uuid as uuid_lib
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts import selectors as account_selectors
from accounts.models import ServiceToken
from core.db import execute_prepared
from core.errors import InvalidRequestError
from core.secrets import API_KEY_SHAPE
from metering.constants import MAX_QUANTITY
from metering.models import (
    Job,
    Service,
    ServiceType,
    UsageEvent,
    UsageEventOutcome,
)
from metering.price_books import PriceBook

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
MAX_EVENTS = 1000
FIELDS = {"id", "project", "service", "type", "units", "timestamp", "job", "key"}
ID_MAX_LENGTH = 255  # UsageEvent.event_id
KEY_MAX_LENGTH = 64  # UsageEvent.key_ref
UNITS_MAX = MAX_QUANTITY
SLUG = re.compile(r"[-a-zA-Z0-9_]{1,64}")


class Reason:
    """Why an event was rejected: the machine code stored on the event and answered."""

    DUPLICATE_ID_IN_BATCH = "duplicate_id_in_batch"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_PROJECT = "invalid_project"
    UNKNOWN_PROJECT = "unknown_project"
    INVALID_SERVICE = "invalid_service"
    UNKNOWN_SERVICE = "unknown_service"
    AMBIGUOUS_SERVICE = "ambiguous_service"
    INVALID_UNITS = "invalid_units"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    INVALID_JOB = "invalid_job"
    UNKNOWN_JOB = "unknown_job"
    JOB_OF_ANOTHER_PROJECT = "job_of_another_project"
    INVALID_KEY = "invalid_key"
    NO_PRICE = "no_price"
    COST_TOO_LARGE = "cost_too_large"


REASON_MESSAGES = {
    Reason.DUPLICATE_ID_IN_BATCH: "This id appears earlier in the same batch",
    Reason.UNKNOWN_FIELD: f"Unknown field; an event has only: {', '.join(sorted(FIELDS))}",
    Reason.INVALID_PROJECT: "project must be a UUID",
    Reason.UNKNOWN_PROJECT: "Project not found",
    Reason.INVALID_SERVICE: "service must be a slug, and type one of: oneshot, longrun, storage",
    Reason.UNKNOWN_SERVICE: "No active service with this slug (and type)",
    Reason.AMBIGUOUS_SERVICE: "Several services have this slug and none is oneshot: give type",
    Reason.INVALID_UNITS: "units must be an integer between 0 and 2^63-1",
    Reason.INVALID_TIMESTAMP: "timestamp must be ISO-8601 or integer seconds since the epoch",
    Reason.TIMESTAMP_OUT_OF_RANGE: "timestamp is outside the accepted window",
    Reason.INVALID_JOB: "job must be a UUID",
    Reason.UNKNOWN_JOB: "Job not found",
    Reason.JOB_OF_ANOTHER_PROJECT: "The job belongs to another project",
    Reason.INVALID_KEY: f"key must be a string of at most {KEY_MAX_LENGTH} characters",
    Reason.NO_PRICE: "The service has no price for this project at the event's time",
    Reason.COST_TOO_LARGE: "The event costs more than any balance can hold",
}


class EventStatus:
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # the id was used before: `outcome` is the first answer
    REJECTED = "rejected"


@dataclass(frozen=True)
class EventResult:
    id: str
    status: str
    outcome: str  # accepted or rejected: this event's (for a duplicate, the first) outcome
    reason: str | None = None

    @property
    def message(self) -> str | None:
        return REASON_MESSAGES.get(self.reason, self.reason) if self.reason else None


@dataclass
class IngestResult:
    results: list[EventResult]
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0


# Ingestion --------------------------------------------------------------------------------------


@dataclass
class _Event:
    """One event of a batch while it is checked: what it names, then what that resolves to."""

    id: str
    raw: dict[str, Any]
    reason: str | None = None
    project_uuid: uuid_lib.UUID | None = None
    slug: str = ""
    kind: str | None = None
    units: int = 0
    occurred_at: datetime | None = None
    job_uuid: uuid_lib.UUID | None = None
    key_ref: str = ""
    project_id: int | None = None
    lab_id: int | None = None
    service_id: int | None = None
    job_id: int | None = None


def _batch_checked(events: object) -> list[dict[str, Any]]:
    """The batch itself must be well formed, or nothing is written: a list of at most
    MAX_EVENTS objects, each with an id (a non-empty string of at most 255 characters)."""
    if not isinstance(events, list):
        raise InvalidRequestError("events must be a list", details={"events": "not a list"})
    if len(events) > MAX_EVENTS:
        raise InvalidRequestError(
            f"A batch has at most {MAX_EVENTS} events",
            details={"events": f"{len(events)} events, more than {MAX_EVENTS}"},
        )
    problems = {}
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            problems[index] = "an event must be an object"
            continue
        event_id = event.get("id")
        if not (isinstance(event_id, str) and 0 < len(event_id) <= ID_MAX_LENGTH):
            problems[index] = f"id must be a string of 1 to {ID_MAX_LENGTH} characters"
        elif not _storable(event_id):
            problems[index] = "id must be valid Unicode without NUL characters"
    if problems:
        raise InvalidRequestError("Malformed events: nothing was written", details=problems)
    return events  # type: ignore[return-value]


def _storable(text: str) -> bool:
    """Whether PostgreSQL can store the text: no NUL, no lone surrogate (invalid UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _as_uuid(value: object) -> uuid_lib.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid_lib.UUID(value)
    except ValueError:
        return None


def _moment(value: object) -> datetime | None:
    """An ISO-8601 string (UTC unless it says otherwise) or integer seconds since the epoch."""
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, tz=UTC)
        if isinstance(value, str) and len(value) <= 64:
            parsed = parse_datetime(value.strip())
            if parsed is not None:
                return _utc(parsed)
    except (OverflowError, OSError, ValueError):
        pass
    return None


def _utc(moment: datetime) -> datetime:
    """In UTC (naive: taken as UTC). Beyond year 1 or 9999 in UTC: the edge it passed, which is
    out of range as the moment itself is."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        edge = datetime.min if moment.year == datetime.min.year else datetime.max
        return edge.replace(tzinfo=UTC)


def _parsed(event: _Event, earliest: datetime, latest: datetime) -> str | None:
    """Check the event's own fields (no database); the reason it is refused, or None."""
    raw = event.raw
    if set(raw) - FIELDS:
        return Reason.UNKNOWN_FIELD
    event.project_uuid = _as_uuid(raw.get("project"))
    if event.project_uuid is None:
        return Reason.INVALID_PROJECT
    slug, kind = raw.get("service"), raw.get("type")
    if not (isinstance(slug, str) and SLUG.fullmatch(slug)):
        return Reason.INVALID_SERVICE
    if kind is not None and kind not in ServiceType.values:
        return Reason.INVALID_SERVICE
    event.slug, event.kind = slug, kind
    units = raw.get("units")
    if not (isinstance(units, int) and not isinstance(units, bool) and 0 <= units <= UNITS_MAX):
        return Reason.INVALID_UNITS
    event.units = units
    event.occurred_at = _moment(raw.get("timestamp"))
    if event.occurred_at is None:
        return Reason.INVALID_TIMESTAMP
    if not earliest <= event.occurred_at <= latest:
        return Reason.TIMESTAMP_OUT_OF_RANGE
    job = raw.get("job")
    if job is not None:
        event.job_uuid = _as_uuid(job)
        if event.job_uuid is None:
            return Reason.INVALID_JOB
    key = raw.get("key")
    if key is not None:
        if not (isinstance(key, str) and len(key) <= KEY_MAX_LENGTH and _storable(key)):
            return Reason.INVALID_KEY
        if full := API_KEY_SHAPE.fullmatch(key):  # a whole key: keep its prefix, never a secret
            key = f"sk_{full.group(1)}"
        event.key_ref = key
    return None


def _service_pick(candidates: dict[str, int], kind: str | None) -> tuple[int | None, str | None]:
    """The service an event names: (slug, type) if it gives a type; else the only service with
    that slug, or the oneshot one among several (as the usage rollups count a shared slug)."""
    if kind is not None:
        service_id = candidates.get(kind)
        return (service_id, None) if service_id else (None, Reason.UNKNOWN_SERVICE)
    if not candidates:
        return None, Reason.UNKNOWN_SERVICE
    if len(candidates) == 1:
        return next(iter(candidates.values())), None
    if ServiceType.ONESHOT in candidates:
        return candidates[ServiceType.ONESHOT], None
    return None, Reason.AMBIGUOUS_SERVICE


def _resolved(token: ServiceToken, checked: list[_Event]) -> None:
    """Resolve projects, services, jobs and prices: one query each, whatever the batch size."""
    project_uuids = {e.project_uuid for e in checked}
    visible = account_selectors.project_list(actor=token)
    projects = {
        uuid: (pk, lab_id)
        for uuid, pk, lab_id in visible.filter(uuid__in=project_uuids).values_list(
            "uuid", "pk", "lab_id"
        )
    }
    services: dict[str, dict[str, int]] = defaultdict(dict)
    rows = Service.objects.filter(slug__in={e.slug for e in checked}, is_active=True)
    for pk, slug, kind in rows.values_list("pk", "slug", "type"):
        services[slug][kind] = pk
    job_uuids = {e.job_uuid for e in checked if e.job_uuid}
    jobs = (
        {
            uuid: (pk, project_id)
            for uuid, pk, project_id in Job.objects.filter(
                uuid__in=job_uuids, project__in=visible.values("pk")
            ).values_list("uuid", "pk", "project_id")
        }
        if job_uuids
        else {}
    )
    for event in checked:
        found = projects.get(event.project_uuid)  # type: ignore[arg-type]
        if found is None:
            event.reason = Reason.UNKNOWN_PROJECT  # also one the token may not see
            continue
        event.project_id, event.lab_id = found
        event.service_id, event.reason = _service_pick(services.get(event.slug, {}), event.kind)
        if event.reason:
            continue
        if event.job_uuid is not None:
            job = jobs.get(event.job_uuid)
            if job is None:
                event.reason = Reason.UNKNOWN_JOB
            elif job[1] != event.project_id:
                event.reason = Reason.JOB_OF_ANOTHER_PROJECT
            else:
                event.job_id = job[0]
    priced = [e for e in checked if e.reason is None]
    book = PriceBook({e.service_id for e in priced}, {e.lab_id for e in priced})  # type: ignore[misc]
    for event in priced:
        price = book.at(event.service_id, event.lab_id, event.occurred_at)  # type: ignore[arg-type]
        if price is None:
            event.reason = Reason.NO_PRICE
        elif not book.cost_fits(price, event.units):
            event.reason = Reason.COST_TOO_LARGE


# New events in one statement, in id order (two batches that share ids lock them in the same
# order); ids the token already used are skipped, and RETURNING says which ones were new. The
# rows travel as one JSON document: encoding it costs less than adapting nine arrays.
_INSERT = """
INSERT INTO metering_usageevent
    (token_id, event_id, project_id, service_id, job_id, key_ref, units, occurred_at,
     received_at, outcome, reason, settled_at)
SELECT %(token)s, e.i, e.p, e.s, e.j, e.k, e.u, e.t, %(now)s, e.o, e.r, NULL
  FROM json_to_recordset(%(events)s::json)
       AS e (i text, p bigint, s bigint, j bigint, k text, u bigint, t timestamptz, o text,
             r text)
 ORDER BY e.i
    ON CONFLICT (token_id, event_id) DO NOTHING
RETURNING event_id
"""


def _insert(token: ServiceToken, events: list[_Event], now: datetime) -> set[str]:
    if not events:
        return set()
    rows = [
        {
            "i": e.id,
            "p": e.project_id,
            "s": e.service_id,
            "j": e.job_id,
            "k": e.key_ref,
            "u": e.units,
            "t": e.occurred_at.astimezone(UTC).isoformat() if e.occurred_at else None,
            "o": UsageEventOutcome.REJECTED.value if e.reason else UsageEventOutcome.ACCEPTED.value,
            "r": e.reason or "",
        }
        for e in events
    ]
    params = {"token": token.pk, "now": now, "events": json.dumps(rows)}
    return {row[0] for row in execute_prepared(_INSERT, params)}


@transaction.atomic
def usage_events_ingest(*, token: ServiceToken, events: object) -> IngestResult:
    """Check and record a batch of usage events for `token`, in one transaction; returns each
    event's outcome in the batch's order. A malformed batch (see _batch_checked) raises
    InvalidRequestError and writes nothing. An id the token used before is a duplicate: its
    first outcome is returned and nothing changes. Accepted events are charged later, by
    usage_events_settle."""
    batch = _batch_checked(events)
    now = timezone.now()
    earliest = now - timedelta(seconds=settings.USAGE_MAX_PAST_SECONDS)
    latest = now + timedelta(seconds=settings.USAGE_MAX_FUTURE_SECONDS)
    seen: set[str] = set()
    items: list[_Event] = []
    for raw in batch:
        event = _Event(id=raw["id"], raw=raw)
        if event.id in seen:
            event.reason = Reason.DUPLICATE_ID_IN_BATCH  # answered, never stored
        else:
            seen.add(event.id)
            event.reason = _parsed(event, earliest, latest)
        items.append(event)
    stored = [e for e in items if e.reason != Reason.DUPLICATE_ID_IN_BATCH]
    checked = [e for e in stored if e.reason is None]
    if checked:
        _resolved(token, checked)
    new = _insert(token, stored, now)
    earlier: dict[str, tuple[str, str]] = {}
    if len(new) < len(stored):  # ids used before: their first outcome, in one query
        rows = UsageEvent.objects.filter(
            token=token, event_id__in=[e.id for e in stored if e.id not in new]
        ).values_list("event_id", "outcome", "reason")
        earlier = {event_id: (outcome, reason) for event_id, outcome, reason in rows}
    result = IngestResult(results=[])
    for event in items:
        if event.reason == Reason.DUPLICATE_ID_IN_BATCH:
            answer = EventResult(
                event.id, EventStatus.REJECTED, UsageEventOutcome.REJECTED, event.reason
            )
        elif event.id in new:
            status = EventStatus.REJECTED if event.reason else EventStatus.ACCEPTED
            answer = EventResult(event.id, status, status, event.reason)
        else:
            outcome, reason = earlier[event.id]
            answer = EventResult(event.id, EventStatus.DUPLICATE, outcome, reason or None)
        result.results.append(answer)
        if answer.status == EventStatus.ACCEPTED:
            result.accepted += 1
        elif answer.status == EventStatus.DUPLICATE:
            result.duplicates += 1
        else:
            result.rejected += 1
    return result
