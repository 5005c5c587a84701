"""The authorize decision: one call a gateway makes before every request it serves.

In this order: the key exists, is not revoked, not expired; the service exists and the key may
use it; requests/min and units/min (Redis, every process); the requests the lab's plan allows
this period (Redis); the key's credit cap; the project's credits. If all pass, a reservation
holds the estimated cost and its job id is returned.

The key, its project, the service, the key's limits, the current price and the lab's discount
come from one prepared statement: nothing is cached in process, so a revocation or a new price
applies to the very next call. The job, the hold and the cap are written by one function call.
"""

from __future__ import annotations

import hmac
import logging
import uuid as uuid_lib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from accounts.authentication import TOKEN
from accounts.models import Project, ServiceToken
from billing import recharge_trigger
from billing.ledger import project_ref
from billing.models import PERIOD_UNITS, PlanPeriod
from core.db import execute_prepared
from core.money import MAX_CREDITS, credits_quantize
from core.secrets import API_KEY_SHAPE, secret_hash
from keys import quotas, ratelimit
from keys.caps import cap_remaining
from keys.hold_function import CapExceeded, FundsShort, HoldCall, hold_call
from keys.models import ALL_SERVICES, KeyJob
from keys.replays import Idempotency, claimed, first_answer
from metering.cost import usage_cost
from metering.models import ServiceType
from metering.reservations import reservation_job_new
from metering.selectors import DISCOUNT_SQL, PRICE_ID_SQL, TIERS_SQL, tiers_of

logger = logging.getLogger(__name__)

UNITS_MAX = 10**15
LAST_USED_RESOLUTION = timedelta(minutes=1)


class Code:
    ALLOWED = "allowed"
    BAD_REQUEST = "bad_request"
    KEY_INVALID = "key_invalid"
    KEY_REVOKED = "key_revoked"
    KEY_EXPIRED = "key_expired"
    SERVICE_UNKNOWN = "service_unknown"
    SERVICE_NOT_ALLOWED = "service_not_allowed"
    SERVICE_NOT_PRICED = "service_not_priced"
    RATE_LIMITED = "rate_limited"
    UNITS_LIMITED = "units_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    KEY_CREDIT_LIMIT = "key_credit_limit"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNAVAILABLE = "rate_limiter_unavailable"


@dataclass
class Decision:
    status: int
    code: str
    message: str
    job_id: uuid_lib.UUID | None = None
    project: uuid_lib.UUID | None = None
    requests: dict[str, int | None] = field(
        default_factory=lambda: {"limit": None, "remaining": None, "reset": None}
    )
    units: dict[str, int | None] = field(
        default_factory=lambda: {"limit": None, "remaining": None, "reset": None}
    )
    credits: dict[str, str | None] = field(
        default_factory=lambda: {"limit": None, "remaining": None}
    )
    retry_after: int | None = None

    @property
    def allowed(self) -> bool:
        return self.code == Code.ALLOWED

    def body(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "code": self.code,
            "message": self.message,
            "job_id": str(self.job_id) if self.job_id else None,
            "project": str(self.project) if self.project else None,
            "limits": {"requests": self.requests, "units": self.units, "credits": self.credits},
        }

    def headers(self) -> dict[str, str]:
        """X-RateLimit-* of the requests/min limit in force, or of the units/min one for a key
        limited by units only."""
        headers = {}
        shown = self.requests if self.requests["limit"] is not None else self.units
        if shown["limit"] is not None:
            headers["X-RateLimit-Limit"] = str(shown["limit"])
            headers["X-RateLimit-Remaining"] = str(shown["remaining"])
            headers["X-RateLimit-Reset"] = str(shown["reset"])
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


_KEY_ROW = """
SELECT k.id, k.secret_hash, k.previous_secret_hash, k.previous_valid_until, k.revoked_at,
       k.expires_at, k.services, k.credit_limit, k.credit_limit_period, k.last_used_at,
       p.id, p.uuid, p.lab_id,
       s.id, s.key_requests_per_minute, s.key_units_per_minute,
       (SELECT json_agg(json_build_array(l.service_slug, l.requests_per_minute,
                                         l.units_per_minute))
          FROM keys_keylimit l
         WHERE l.key_id = k.id AND l.service_slug IN ('*', %(slug)s)),
       price.id, {tiers}, {discount},
       (SELECT json_build_object(
                 'subscription', sub.uuid, 'plan', plan.slug, 'started_at', sub.started_at,
                 'period', plan.period,
                 'quotas', (SELECT json_agg(json_build_array(qs.slug, q.requests)
                                            ORDER BY q.service_id NULLS FIRST)
                              FROM keys_planquota q
                              LEFT JOIN metering_service qs ON qs.id = q.service_id
                             WHERE q.plan_id = sub.plan_id
                               AND (q.service_id IS NULL OR q.service_id = s.id)))
          FROM billing_plansubscription sub
          JOIN billing_plan plan ON plan.id = sub.plan_id
         WHERE sub.lab_id = p.lab_id AND sub.ended_at IS NULL)
  FROM keys_apikey k
  JOIN accounts_project p ON p.id = k.project_id
  LEFT JOIN metering_service s
    ON s.slug = %(slug)s AND s.type = 'oneshot' AND s.is_active AND NOT s.is_legacy
  LEFT JOIN LATERAL (SELECT {price} AS id) price ON true
 WHERE k.lookup_id = %(lookup)s
""".format(  # noqa: S608
    price=PRICE_ID_SQL.format(service="s.id", lab="p.lab_id", at="%(now)s"),
    tiers=TIERS_SQL.format(price="price.id"),
    discount=DISCOUNT_SQL.format(lab="p.lab_id", at="%(now)s"),
)


@dataclass(frozen=True)
class KeyRow:
    id: int
    secret_hash: str
    previous_secret_hash: str
    previous_valid_until: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None
    services: list[str] | None
    credit_limit: Decimal | None
    credit_limit_period: str
    last_used_at: datetime | None
    project_id: int
    project_uuid: uuid_lib.UUID
    lab_id: int
    service_id: int | None
    default_requests: int | None
    default_units: int | None
    key_limits: list[list[Any]] | None
    price_id: int | None
    tiers: list[list[Any]] | None
    discount: Decimal | None
    plan_quotas: dict[str, Any] | None  # the lab's plan and its quotas for this service


def key_row(lookup_id: str, slug: str, now: datetime) -> KeyRow | None:
    rows = execute_prepared(_KEY_ROW, {"lookup": lookup_id, "slug": slug, "now": now})
    return KeyRow(*rows[0]) if rows else None


def secret_valid(row: KeyRow, secret: str, now: datetime) -> bool:
    """Constant-time comparison with the current secret's HMAC, or with the previous one's
    during its grace period after a rotation."""
    presented = secret_hash(secret)
    current = secret_matches_hash(presented, row.secret_hash)
    previous = bool(row.previous_secret_hash) and secret_matches_hash(
        presented, row.previous_secret_hash
    )
    in_grace = row.previous_valid_until is not None and row.previous_valid_until > now
    return current or (previous and in_grace)


def secret_matches_hash(presented_hash: str, stored_hash: str) -> bool:
    return hmac.compare_digest(presented_hash, stored_hash)


def limits_in_force(row: KeyRow, slug: str) -> list[ratelimit.ScopeLimit]:
    """The key-wide limits, and the service's: the key's own where tighter than the
    operator's default, the default otherwise (a default lowered later wins too)."""
    own = {scope: (rpm, upm) for scope, rpm, upm in row.key_limits or []}
    key_rpm, key_upm = own.get(ALL_SERVICES, (None, None))
    svc_rpm, svc_upm = own.get(slug, (None, None))
    limits = []
    if key_rpm is not None or key_upm is not None:
        limits.append(ratelimit.ScopeLimit(ALL_SERVICES, key_rpm, key_upm))
    service_limit = ratelimit.ScopeLimit(
        slug, _tighter(svc_rpm, row.default_requests), _tighter(svc_upm, row.default_units)
    )
    if service_limit.requests_per_minute is not None or service_limit.units_per_minute is not None:
        limits.append(service_limit)
    return limits


def _tighter(own: int | None, default: int | None) -> int | None:
    if own is None or default is None:
        return own if default is None else default
    return min(own, default)


def _refusal(status: int, code: str, message: str, **kwargs: Any) -> Decision:
    return Decision(status=status, code=code, message=message, **kwargs)


def _tightest(result: ratelimit.HitResult, kind: str) -> dict[str, int | None] | None:
    """The headline figures of one kind (requests, units): the scope with the fewest left."""
    limited = [s for s in result.scopes if getattr(s.limit, f"{kind}_per_minute") is not None]
    if not limited:
        return None
    tightest = min(limited, key=lambda s: getattr(s, f"{kind}_remaining") or 0)
    return {
        "limit": getattr(tightest.limit, f"{kind}_per_minute"),
        "remaining": getattr(tightest, f"{kind}_remaining"),
        "reset": ratelimit.seconds_ceil(tightest.reset_ms),
    }


def _apply_usage(decision: Decision, result: ratelimit.HitResult) -> None:
    decision.requests = _tightest(result, "requests") or decision.requests
    decision.units = _tightest(result, "units") or decision.units


def parse_key(raw: object) -> tuple[str, str] | None:
    if not isinstance(raw, str):
        return None
    match = API_KEY_SHAPE.fullmatch(raw)
    return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True)
class KeyRead:
    """The presented key, split, and its row as of `now` (None: no such key)."""

    now: datetime
    parsed: tuple[str, str] | None
    row: KeyRow | None


def key_read(raw_key: str, slug: str) -> KeyRead:
    now = timezone.now()
    parsed = parse_key(raw_key)
    return KeyRead(now, parsed, key_row(parsed[0], slug, now) if parsed else None)


# The service token's row and the key's in one statement, for authorize's hot path: the token
# is checked from its columns before anything of the key is used.
_TOKEN_AND_KEY = f"""
SELECT {TOKEN.sql}, key.*
  FROM (SELECT 1) AS one
  LEFT JOIN accounts_servicetoken t ON t.lookup_id = %(token)s
  LEFT JOIN LATERAL ({_KEY_ROW}) AS key ON true
"""  # noqa: S608


def token_and_key_read(
    *, token_lookup: str | None, raw_key: str, slug: str
) -> tuple[ServiceToken | None, KeyRead]:
    """The token of a lookup id (unverified, None if unknown) and key_read's result, in one
    round trip."""
    now = timezone.now()
    parsed = parse_key(raw_key)
    params = {"token": token_lookup, "lookup": parsed[0] if parsed else None, "slug": slug}
    [row] = execute_prepared(_TOKEN_AND_KEY, params | {"now": now})
    token = TOKEN.load(row) if row[0] is not None else None
    key = row[len(TOKEN) :]
    return token, KeyRead(now, parsed, KeyRow(*key) if key[0] is not None else None)


def authorize(
    *,
    token: ServiceToken,
    raw_key: str,
    slug: str,
    units: int,
    idempotency: Idempotency | None = None,
    read: KeyRead | None = None,
) -> Decision:
    """The decision for a verified service token; `read` if the key was read already."""
    read = read or key_read(raw_key, slug)
    now, parsed, row = read.now, read.parsed, read.row
    if row is None or not secret_valid(row, parsed[1], now):  # type: ignore[index]
        return _refusal(401, Code.KEY_INVALID, "Unknown API key.")
    if token.lab_id is not None and token.lab_id != row.lab_id:
        return _refusal(401, Code.KEY_INVALID, "Unknown API key.")  # not this token's to see
    if row.revoked_at is not None:
        return _refusal(401, Code.KEY_REVOKED, "This API key was revoked.")
    if row.expires_at is not None and row.expires_at <= now:
        return _refusal(401, Code.KEY_EXPIRED, "This API key has expired.")
    project = row.project_uuid
    if row.service_id is None:
        return _refusal(403, Code.SERVICE_UNKNOWN, f"No service '{slug}'.", project=project)
    if row.services is not None and slug not in row.services:
        return _refusal(
            403, Code.SERVICE_NOT_ALLOWED, f"This key may not use '{slug}'.", project=project
        )
    if row.price_id is None:
        return _refusal(
            403, Code.SERVICE_NOT_PRICED, f"'{slug}' has no price at the moment.", project=project
        )
    _last_used_touch(row, now)
    discount = row.discount or Decimal(0)
    cost = credits_quantize(usage_cost(tiers_of(row.tiers), 0, units, discount))
    decision = Decision(status=200, code=Code.ALLOWED, message="Allowed.", project=project)
    if row.credit_limit is not None:
        decision.credits = {"limit": str(row.credit_limit), "remaining": None}

    limits = limits_in_force(row, slug)
    job_uuid = uuid_lib.uuid4()
    counted = False
    if limits:
        try:
            result = ratelimit.hit(key_id=row.id, limits=limits, member=str(job_uuid), units=units)
        except ratelimit.RateLimiterUnavailable:
            logger.warning("rate limiter unavailable for key %s", row.id)
            if not settings.RATE_LIMITS_FAIL_OPEN:
                return _unavailable(decision)
        else:
            _apply_usage(decision, result)
            if not result.allowed:
                decision.status = 429
                decision.retry_after = max(ratelimit.seconds_ceil(result.retry_after_ms), 1)
                if result.refused == "requests":
                    decision.code = Code.RATE_LIMITED
                    decision.message = f"Too many requests for '{result.refused_scope}'."
                else:
                    decision.code = Code.UNITS_LIMITED
                    decision.message = (
                        f"{units} units is more than the per-minute limit of this key."
                        if result.refused == "units_above_limit"
                        else f"Too many units a minute for '{result.refused_scope}'."
                    )
                return decision
            counted = True

    def take_back(quota: quotas.QuotaResult | None) -> None:
        """Nothing was held: the request must count against no window or quota either."""
        if counted:
            _undo(row.id, limits, job_uuid)
        if quota is not None and quota.allowed:
            _quota_undo(quota)

    plan_quotas = quotas.PlanQuotas.from_row(row.plan_quotas)
    quota = None
    if plan_quotas is not None:
        try:
            quota = quotas.consume(plan_quotas, now)
        except ratelimit.RateLimiterUnavailable:
            logger.warning("quota counters unavailable for key %s", row.id)
            if not settings.RATE_LIMITS_FAIL_OPEN:
                take_back(None)
                return _unavailable(decision)
        else:
            if not quota.allowed:
                take_back(None)
                return _quota_refusal(decision, plan_quotas, quota, slug)

    try:
        refusal = _reserve(row, slug, units, cost, job_uuid, token, decision, now, idempotency)
    except IntegrityError:
        take_back(quota)
        answer = first_answer(idempotency) if idempotency is not None else None
        if answer is None:
            raise
        return _replayed(*answer)  # a concurrent retry with the same key won the race
    except Exception:
        take_back(quota)
        raise
    if refusal is not None:
        take_back(quota)
        return refusal
    return decision


def _unavailable(decision: Decision) -> Decision:
    decision.status, decision.code = 503, Code.UNAVAILABLE
    decision.message = "Rate limits or quotas cannot be checked right now; retry shortly."
    decision.retry_after = 1
    return decision


def _quota_refusal(
    decision: Decision, plan_quotas: quotas.PlanQuotas, quota: quotas.QuotaResult, slug: str
) -> Decision:
    scope = quota.refused_scope
    limit = dict(plan_quotas.limits)[scope]
    what = "requests of every service" if scope == ALL_SERVICES else f"'{slug}' requests"
    decision.status, decision.code = 402, Code.QUOTA_EXCEEDED
    decision.message = (
        f"The lab's plan allows {limit} {what} a {PERIOD_UNITS[PlanPeriod(plan_quotas.period)]}: "
        f"none left until {quota.period_end.isoformat()}."
    )
    return decision


def _replayed(status: int, body: dict[str, Any]) -> Decision:
    decision = Decision(status=status, code=body["code"], message=body["message"])
    decision.job_id = uuid_lib.UUID(body["job_id"]) if body.get("job_id") else None
    decision.project = uuid_lib.UUID(body["project"]) if body.get("project") else None
    decision.requests, decision.units = body["limits"]["requests"], body["limits"]["units"]
    decision.credits = body["limits"]["credits"]
    return decision


def authorize_once(
    *, token: ServiceToken, raw_key: str, slug: str, units: int, header: str | None
) -> Decision:
    """authorize, replaying the first allowed answer to a retry with the same Idempotency-Key."""
    if not header:
        return authorize(token=token, raw_key=raw_key, slug=slug, units=units)
    idempotency = Idempotency.of(
        token_id=token.pk, header=header, raw_key=raw_key, slug=slug, units=units
    )
    with claimed(idempotency):
        answer = first_answer(idempotency)
        if answer is not None:
            return _replayed(*answer)
        used = KeyJob.objects.filter(idempotency_key=idempotency.key).exists()
        return authorize(  # a key whose answer no longer holds: decided again, not remembered
            token=token,
            raw_key=raw_key,
            slug=slug,
            units=units,
            idempotency=None if used else idempotency,
        )


def _reserve(
    row: KeyRow,
    slug: str,
    units: int,
    cost: Decimal,
    job_uuid: uuid_lib.UUID,
    token: ServiceToken,
    decision: Decision,
    now: datetime,
    idempotency: Idempotency | None = None,
) -> Decision | None:
    """Job, hold, cap and KeyJob row in one call of keys.hold_function, which commits by
    itself (with the idempotency record, both in one transaction). Returns the refusal, or
    None when all is held."""
    if cost >= MAX_CREDITS:  # no project holds that much; refuse before writing anything
        if row.credit_limit is not None and cap_remaining(row.id, now) < cost:
            return _cap_refusal(decision, row, now)  # the cap is checked before the project
        return _funds_refusal(decision, cost)
    project = Project(pk=row.project_id, lab_id=row.lab_id)
    job = reservation_job_new(
        project=project,
        service_id=row.service_id,  # type: ignore[arg-type]
        kind=ServiceType.ONESHOT,
        price_id=row.price_id,  # type: ignore[arg-type]
        amount=cost,
        params={"count": units},
        job_uuid=job_uuid,
        at=now,
    )
    call = HoldCall(
        job=job,
        key_id=row.id,
        limited=row.credit_limit is not None,
        slug=slug,
        units=units,
        token=token,
    )

    def held() -> None:
        remaining = hold_call(call)
        decision.job_id = job_uuid
        if remaining is not None:
            decision.credits = {"limit": str(row.credit_limit), "remaining": str(remaining)}
        if idempotency is not None:
            execute_prepared(_REMEMBER, _remembered(idempotency, job_uuid, decision))
        if cost > 0:  # committed already, unless with the idempotency record
            recharge_trigger.debited_committed([project_ref(project)])

    try:
        if idempotency is None:
            held()
        else:
            with transaction.atomic():
                held()
    except CapExceeded:
        return _cap_refusal(decision, row, now)
    except FundsShort:
        return _funds_refusal(decision, cost)
    return None


# A duplicate key fails this with a unique violation, rolling the whole hold back.
_REMEMBER = """
UPDATE keys_keyjob SET idempotency_key = %(key)s, request_fingerprint = %(fingerprint)s,
       first_response = %(body)s
 WHERE job_id = (SELECT id FROM metering_job WHERE uuid = %(job)s)
"""


def _remembered(idempotency: Idempotency, job_uuid: uuid_lib.UUID, decision: Decision) -> dict:
    return {
        "key": idempotency.key,
        "fingerprint": idempotency.fingerprint,
        "body": Jsonb(decision.body()),
        "job": job_uuid,
    }


def _funds_refusal(decision: Decision, cost: Decimal) -> Decision:
    decision.status, decision.code = 402, Code.INSUFFICIENT_FUNDS
    decision.message = f"The project's credits do not cover the estimated {cost}."
    return decision


def _cap_refusal(decision: Decision, row: KeyRow, now: datetime) -> Decision:
    decision.status, decision.code = 402, Code.KEY_CREDIT_LIMIT
    decision.message = "This key's credit limit does not cover the estimated cost."
    decision.credits = {
        "limit": str(row.credit_limit),
        "remaining": str(max(cap_remaining(row.id, now), Decimal(0))),
    }
    return decision


def _undo(key_id: int, limits: list[ratelimit.ScopeLimit], job_uuid: uuid_lib.UUID) -> None:
    try:
        ratelimit.hit_undo(
            key_id=key_id, scopes=[limit.scope for limit in limits], member=str(job_uuid)
        )
    except ratelimit.RateLimiterUnavailable:
        logger.warning("could not take back a refused request of key %s", key_id)


def _quota_undo(quota: quotas.QuotaResult) -> None:
    try:
        quotas.give_back(quota)
    except ratelimit.RateLimiterUnavailable:
        logger.warning("could not take back a refused request from quota counters %s", quota)


def _last_used_touch(row: KeyRow, now: datetime) -> None:
    """At most one write a minute per key; concurrent requests write it once."""
    if row.last_used_at is None or row.last_used_at < now - LAST_USED_RESOLUTION:
        execute_prepared(
            "UPDATE keys_apikey SET last_used_at = %(now)s WHERE id = %(id)s"
            " AND (last_used_at IS NULL OR last_used_at < %(stale)s)",
            {"now": now, "id": row.id, "stale": now - LAST_USED_RESOLUTION},
        )
