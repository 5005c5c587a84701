"""Reads of API keys, always through the acting principal: a person sees the keys of the labs
they belong to; a service token those of its lab, or every lab's for an operator's token."""

from __future__ import annotations

import uuid as uuid_lib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDay
from django.utils import timezone

from accounts import selectors as account_selectors
from accounts.models import Project, User
from accounts.selectors import Actor
from billing import selectors as billing_selectors
from keys.caps import cap_period_start
from keys.errors import KeyNotFoundError
from keys.models import ALL_SERVICES, ApiKey, KeyJob, PlanQuota
from keys.quotas import PlanQuotas
from metering.models import Service, UsageEvent, UsageEventOutcome

ZERO = Decimal(0)


def key_list(*, actor: Actor, project: Project | None = None) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.select_related("project__lab", "created_by").filter(
        project__in=account_selectors.project_list(actor=actor)
    )
    return keys if project is None else keys.filter(project=project)


def key_get(*, actor: Actor, key_uuid: uuid_lib.UUID | str) -> ApiKey:
    try:
        wanted = key_uuid if isinstance(key_uuid, uuid_lib.UUID) else uuid_lib.UUID(str(key_uuid))
    except ValueError as exc:
        raise KeyNotFoundError() from exc
    key = key_list(actor=actor).filter(uuid=wanted).first()
    if key is None:
        raise KeyNotFoundError()
    return key


def keys_manageable(*, user: User, keys: Sequence[ApiKey]) -> set[int]:
    """The pks of the keys of `keys` the user may revoke and rotate: the key's creator, and the
    owners and admins of its lab. One query for the roles, none when the user made them all."""
    others = {key.project.lab_id for key in keys if key.created_by_id != user.pk}
    roles = dict(user.memberships.filter(lab_id__in=others).values_list("lab_id", "role"))
    return {
        key.pk
        for key in keys
        if key.created_by_id == user.pk
        or account_selectors.lab_role_can_manage(roles.get(key.project.lab_id))
    }


def key_can_manage(*, user: User, key: ApiKey) -> bool:
    """Revoke and rotate: the rule of keys_manageable, for one key."""
    return key.pk in keys_manageable(user=user, keys=[key])


def key_status(key: ApiKey, now: datetime) -> str:
    """active, expired or revoked, as authorize decides it: from revoked_at and expires_at."""
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def key_credit_used(key: ApiKey, now: datetime) -> Decimal:
    """What the key's credit cap counts in its current period: credit_used belongs to the period
    it was last written in, and a new period starts from zero (no cap: zero). As the cap's SQL
    (keys.caps) decides it: only a period that began after the row's resets it (an authorize
    that read a period kind just changed may have left a later start in the row)."""
    if key.credit_limit is None:
        return ZERO
    current = cap_period_start(key.credit_limit_period, now)
    started = key.credit_period_start
    if current is not None and (started is None or current > started):
        return ZERO
    return key.credit_used


@dataclass(frozen=True)
class KeyUsage:
    requests: int
    units: int  # actual units of settled requests, of every service
    charged: Decimal
    # The same units per service slug: only these add up (tokens and seconds do not).
    units_by_service: dict[str, int] = field(default_factory=dict)


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def key_usage(key_ids: list[int], *, since: datetime) -> dict[int, KeyUsage]:
    """Per key: requests authorized since `since`, and the actual units and charges of the jobs
    settled since then (the job's charges, however its usage was posted)."""
    settled = Q(settled_at__gte=since)
    rows = (
        KeyJob.objects.filter(key_id__in=key_ids)
        .filter(Q(created_at__gte=since) | settled)
        .values("key_id", "service_slug")
        .annotate(
            requests=Count("id", filter=Q(created_at__gte=since)),
            units=Coalesce(Sum("units", filter=settled), 0),
            charged=Coalesce(Sum("job__charged_amount", filter=settled), ZERO),
        )
        .order_by("key_id", "service_slug")
    )
    usage = {key_id: KeyUsage(0, 0, ZERO) for key_id in key_ids}
    for row in rows:
        total = usage[row["key_id"]]
        by_service = total.units_by_service
        if row["units"]:
            by_service = {**by_service, row["service_slug"]: row["units"]}
        usage[row["key_id"]] = KeyUsage(
            total.requests + row["requests"],
            total.units + row["units"],
            total.charged + row["charged"],
            by_service,
        )
    return usage


@dataclass(frozen=True)
class KeyDay:
    """One UTC day of a key: requests authorized that day; units and credits of the jobs
    settled that day (as key_usage counts them)."""

    day: datetime
    requests: int
    units: int
    charged: Decimal
    percent: int  # of the window's highest day in credits, for the chart


@dataclass(frozen=True)
class KeyServiceUsage:
    slug: str
    requests: int
    units: int
    charged: Decimal


def key_usage_days(
    key: ApiKey, *, days: int = 30, now: datetime | None = None
) -> tuple[list[KeyDay], list[KeyServiceUsage]]:
    """The key's last `days` UTC days, oldest first, and its use of each service over them."""
    today = _day_start(now or timezone.now())
    start = today - timedelta(days=days - 1)
    jobs = KeyJob.objects.filter(key=key).order_by()
    made = jobs.filter(created_at__gte=start)
    settled = jobs.filter(settled_at__gte=start)
    requests = dict(
        made.annotate(day=TruncDay("created_at", tzinfo=UTC))
        .values_list("day")
        .annotate(n=Count("id"))
    )
    spent = {
        row["day"]: row
        for row in settled.annotate(day=TruncDay("settled_at", tzinfo=UTC))
        .values("day")
        .annotate(
            used=Coalesce(Sum("units"), 0), charged=Coalesce(Sum("job__charged_amount"), ZERO)
        )
    }
    highest = max((row["charged"] for row in spent.values()), default=ZERO)
    series = []
    for n in range(days):
        day = start + timedelta(days=n)
        row = spent.get(day, {"used": 0, "charged": ZERO})
        percent = int(row["charged"] * 100 / highest) if highest > 0 else 0
        series.append(
            KeyDay(day, requests.get(day, 0), row["used"], row["charged"], max(percent, 0))
        )
    per_service = {
        row["service_slug"]: row
        for row in settled.values("service_slug").annotate(
            used=Coalesce(Sum("units"), 0), charged=Coalesce(Sum("job__charged_amount"), ZERO)
        )
    }
    asked = dict(made.values_list("service_slug").annotate(n=Count("id")))
    services = [
        KeyServiceUsage(
            slug,
            asked.get(slug, 0),
            per_service.get(slug, {}).get("used", 0),
            per_service.get(slug, {}).get("charged", ZERO),
        )
        for slug in sorted(set(asked) | set(per_service))
    ]
    return series, services


def key_usage_by_day_and_service(
    key: ApiKey, *, days: int = 30, now: datetime | None = None
) -> list[tuple[date, str, int, int, Decimal]]:
    """(UTC day, service slug, requests, units, credits) of the key's last `days` days, oldest
    first, as key_usage_days counts them: requests on the day they were authorized, units and
    credits on the day their usage was settled. Rows with nothing are left out."""
    today = _day_start(now or timezone.now())
    start = today - timedelta(days=days - 1)
    jobs = KeyJob.objects.filter(key=key).order_by()
    made = (
        jobs.filter(created_at__gte=start)
        .annotate(day=TruncDay("created_at", tzinfo=UTC))
        .values_list("day", "service_slug")
        .annotate(n=Count("id"))
    )
    settled = (
        jobs.filter(settled_at__gte=start)
        .annotate(day=TruncDay("settled_at", tzinfo=UTC))
        .values_list("day", "service_slug")
        .annotate(
            used=Coalesce(Sum("units"), 0), charged=Coalesce(Sum("job__charged_amount"), ZERO)
        )
    )
    rows: dict[tuple[datetime, str], list] = {}
    for day, slug, count in made:
        rows.setdefault((day, slug), [0, 0, ZERO])[0] = count
    for day, slug, used, charged in settled:
        row = rows.setdefault((day, slug), [0, 0, ZERO])
        row[1], row[2] = used, charged
    return [(day.date(), slug, *rows[day, slug]) for day, slug in sorted(rows)]


def key_event_units(
    key: ApiKey, *, days: int = 30, now: datetime | None = None
) -> list[tuple[Service, int, int]]:
    """(service, events, units) of the accepted batch usage events (POST /api/v1/usage/
    events) of the key's project that name this key, by its id or its prefix, and happened in
    its last `days` UTC days. Their credits are charged with the project's other usage, summed
    per service, so they have no price of their own here."""
    start = _day_start(now or timezone.now()) - timedelta(days=days - 1)
    rows = (
        UsageEvent.objects.filter(
            project_id=key.project_id,
            key_ref__in=[str(key.uuid), f"{ApiKey.PREFIX}{key.lookup_id}"],
            outcome=UsageEventOutcome.ACCEPTED,
            occurred_at__gte=start,
        )
        .values_list("service_id")
        .annotate(events=Count("id"), units=Sum("units"))
        .order_by()
    )
    services = Service.objects.in_bulk([service_id for service_id, _, _ in rows])
    found = [(services[service_id], events, int(units)) for service_id, events, units in rows]
    return sorted(found, key=lambda row: (row[0].slug, row[0].type))


def key_usage_this_month(key_ids: list[int], *, now: datetime | None = None) -> dict[int, KeyUsage]:
    return key_usage(key_ids, since=_month_start(now or timezone.now()))


def key_usage_today(key_ids: list[int], *, now: datetime | None = None) -> dict[int, KeyUsage]:
    return key_usage(key_ids, since=_day_start(now or timezone.now()))


def key_limits(key: ApiKey) -> dict[str, dict[str, int | None]]:
    """The key's own limits by scope (`*` or a slug), as stored."""
    return {
        limit.service_slug: {
            "requests_per_minute": limit.requests_per_minute,
            "units_per_minute": limit.units_per_minute,
        }
        for limit in key.limits.all()
    }


def active_keys(keys: QuerySet[ApiKey], *, now: datetime | None = None) -> QuerySet[ApiKey]:
    now = now or timezone.now()
    return keys.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at__isnull=True)


def plan_quotas(*, lab_id: int) -> PlanQuotas | None:
    """The lab's plan with every request quota it has ("*" first; maybe none), or None: the lab
    is on no plan."""
    subscription = billing_selectors.plan_subscription_current(lab_id=lab_id)
    if subscription is None:
        return None
    limits = [
        (quota.service.slug if quota.service else ALL_SERVICES, quota.requests)
        for quota in PlanQuota.objects.filter(plan_id=subscription.plan_id)
        .select_related("service")
        .order_by(F("service_id").asc(nulls_first=True))
    ]
    return PlanQuotas(
        subscription=subscription.uuid,
        plan=subscription.plan.slug,
        started_at=subscription.started_at,
        period=subscription.plan.period,
        limits=limits,
    )
