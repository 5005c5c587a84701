"""Writes of API keys: create, revoke, rotate, expire; the cap bookkeeping of authorized jobs.

A key's limits may be tighter than its services' operator defaults, never looser; a missing limit
of the key's own means the default applies (keys/limits.py computes what is in force)."""

from __future__ import annotations

import hashlib
import json
import uuid as uuid_lib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import selectors as account_selectors
from accounts.models import Lab, Project, ServiceToken, User
from billing.errors import IdempotencyConflictError
from billing.models import PlanSubscription
from core.money import AmountError, credits_parse, credits_quantize
from core.secrets import lookup_id_generate, secret_generate, secret_hash
from keys import quotas
from keys.caps import cap_period_start, cap_recounted, keys_locked
from keys.errors import KeySettingsError
from keys.models import ALL_SERVICES, ApiKey, CreditPeriod, KeyLimit, QuotaReset
from keys.quotas import PlanQuotas
from keys.selectors import key_limits
from metering.models import Service, ServiceType

LIMIT_FIELDS = ("requests_per_minute", "units_per_minute")


@dataclass
class KeySettings:
    """What a key may do, as checked by key_settings_validate."""

    services: list[str] | None = None  # None: all
    limits: dict[str, dict[str, int | None]] = field(default_factory=dict)
    credit_limit: Decimal | None = None
    credit_limit_period: str = ""
    expires_at: datetime | None = None


def authorizable_services(slugs: Sequence[str] | None = None) -> dict[str, Service]:
    """Active oneshot services by slug: what a key can be authorized for (a request's units
    are settled as a oneshot job's count)."""
    services = Service.objects.filter(type=ServiceType.ONESHOT, is_active=True, is_legacy=False)
    if slugs is not None:
        services = services.filter(slug__in=slugs)
    return {service.slug: service for service in services}


# The most each limit may be: what its column holds (requests an integer, units a bigint).
LIMIT_MAX = {"requests_per_minute": 2**31 - 1, "units_per_minute": 2**53}


def _limit_value(value: object, where: str, errors: dict[str, list[str]]) -> int | None:
    if value is None:
        return None
    most = LIMIT_MAX[where.rsplit(".", 1)[-1]]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        errors.setdefault(where, []).append(f"Must be a whole number from 1 to {most}, or null.")
        return None
    return value


def key_settings_validate(
    *,
    services: Sequence[str] | None,
    limits: Mapping[str, Mapping[str, object]] | None,
    credit_limit: object = None,
    credit_limit_period: str | None = None,
    expires_at: datetime | None = None,
    now: datetime | None = None,
    kept: Collection[str] = (),
) -> KeySettings:
    """Checked settings, or KeySettingsError listing every problem at once. `kept`: services a
    key being edited already names that are no longer offered; they stay as they are, unchecked
    (a service switched off must not make its keys uneditable, nor lose their limits)."""
    errors: dict[str, list[str]] = {}
    now = now or timezone.now()
    wanted = set(services or []) | {slug for slug in (limits or {}) if slug != ALL_SERVICES}
    known = authorizable_services(sorted(wanted))
    if services is not None:
        if not services:
            errors["services"] = ["Give at least one service, or null for all."]
        unknown = sorted(set(services) - set(known) - set(kept))
        if unknown:
            errors.setdefault("services", []).append(f"Unknown service(s): {', '.join(unknown)}.")
    cleaned_limits: dict[str, dict[str, int | None]] = {}
    for slug, given in (limits or {}).items():
        where = f"limits.{slug}"
        if slug != ALL_SERVICES and slug not in known and slug not in kept:
            errors.setdefault(where, []).append("Unknown service.")
            continue
        if services is not None and slug != ALL_SERVICES and slug not in services:
            errors.setdefault(where, []).append("The key is not allowed this service.")
            continue
        if not isinstance(given, Mapping) or set(given) - set(LIMIT_FIELDS):
            errors.setdefault(where, []).append(
                f"An object with {' and/or '.join(LIMIT_FIELDS)} only."
            )
            continue
        values = {
            name: _limit_value(given.get(name), f"{where}.{name}", errors) for name in LIMIT_FIELDS
        }
        service = known.get(slug)
        for name, value in values.items():
            default = getattr(service, f"key_{name}", None) if service else None
            if value is not None and default is not None and value > default:
                errors.setdefault(f"{where}.{name}", []).append(
                    f"At most {default}, the service's default: a key may be tighter, not looser."
                )
        if any(v is not None for v in values.values()):
            cleaned_limits[slug] = values
    amount = None
    if credit_limit is not None and credit_limit != "":
        try:
            amount = credits_parse(credit_limit, positive=False)
            if amount < 0:
                raise AmountError("Amount must be at least 0")
        except AmountError as exc:
            errors["credit_limit"] = [str(exc)]
    period = credit_limit_period or ""
    if period not in ("", *CreditPeriod.values):
        errors["credit_limit_period"] = [f"One of: {', '.join(CreditPeriod.values)}, or null."]
    elif period and amount is None and "credit_limit" not in errors:
        errors["credit_limit_period"] = ["A period needs a credit limit."]
    if expires_at is not None and expires_at <= now:
        errors["expires_at"] = ["Must be in the future."]
    if errors:
        raise KeySettingsError(details=errors)
    return KeySettings(
        services=sorted(set(services)) if services is not None else None,
        limits=cleaned_limits,
        credit_limit=amount,
        credit_limit_period=period,
        expires_at=expires_at,
    )


def _full_key(key: ApiKey, secret: str) -> str:
    return f"{ApiKey.PREFIX}{key.lookup_id}_{secret}"


def _name_checked(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100:
        raise KeySettingsError(details={"name": ["Between 1 and 100 characters."]})
    return name


@transaction.atomic
def key_create(
    *,
    project: Project,
    name: str,
    key_settings: KeySettings,
    created_by: User | None = None,
    created_by_token: ServiceToken | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its full value, which is never stored and shown only now."""
    name = _name_checked(name)
    secret = secret_generate()
    key = ApiKey.objects.create(
        project=project,
        name=name,
        created_by=created_by,
        created_by_token=created_by_token,
        lookup_id=lookup_id_generate(),
        secret_hash=secret_hash(secret),
        services=key_settings.services,
        credit_limit=key_settings.credit_limit,
        credit_limit_period=key_settings.credit_limit_period,
        expires_at=key_settings.expires_at,
    )
    KeyLimit.objects.bulk_create(
        KeyLimit(key=key, service_slug=slug, **values)
        for slug, values in key_settings.limits.items()
    )
    return key, _full_key(key, secret)


@transaction.atomic
def key_update(
    *, key: ApiKey, name: str, key_settings: KeySettings, now: datetime | None = None
) -> ApiKey:
    """Replace a key's name and settings (as key_settings_validate checked them), in force from
    the next authorize in every process. Its secret, project and usage stay. A cap added, or a
    cap's period changed, counts what the key already spent in the new period (keys.caps
    .cap_recounted); a cap's new amount alone keeps what it counted. Only the key's row is
    locked, as authorize and settlement lock it: an authorize that read the old settings
    before this commits may still pass under them."""
    now = now or timezone.now()
    name = _name_checked(name)
    key = ApiKey.objects.select_for_update(no_key=True).get(pk=key.pk)
    _changeable(key, now)
    limit, period = key_settings.credit_limit, key_settings.credit_limit_period
    if limit is not None and (key.credit_limit is None or period != key.credit_limit_period):
        key.credit_period_start = cap_period_start(period, now)
        key.credit_used = cap_recounted(key.pk, key.credit_period_start)
    key.name = name
    key.services = key_settings.services
    key.credit_limit, key.credit_limit_period = limit, period
    key.expires_at = key_settings.expires_at
    key.save(
        update_fields=[
            "name", "services", "credit_limit", "credit_limit_period", "credit_used",
            "credit_period_start", "expires_at", "updated_at",
        ]
    )  # fmt: skip
    key.limits.all().delete()
    KeyLimit.objects.bulk_create(
        KeyLimit(key=key, service_slug=slug, **values)
        for slug, values in key_settings.limits.items()
    )
    return key


def _changeable(key: ApiKey, now: datetime) -> None:
    if key.revoked_at is not None:
        raise KeySettingsError("A revoked key cannot be changed.")
    if key.expired_at is not None or (key.expires_at is not None and key.expires_at <= now):
        raise KeySettingsError("An expired key cannot be changed: create a new one.")


def key_named_services(key: ApiKey) -> set[str]:
    """The services a key names: in its list of allowed ones, or in its limits."""
    return set(key.services or []) | {
        limit.service_slug for limit in key.limits.all() if limit.service_slug != ALL_SERVICES
    }


@transaction.atomic
def key_patch(*, key: ApiKey, changes: Mapping[str, Any]) -> ApiKey:
    """The management API's PATCH: the settings given replace the key's, the others stay
    (`limits`, when given, replaces every limit). A cap removed (`credit_limit: null`) takes
    its period with it unless a period is given too. The key is read under its lock, so two
    patches of different fields both stay."""
    key = ApiKey.objects.select_for_update(no_key=True).get(pk=key.pk)
    _changeable(key, timezone.now())  # before its settings are checked, which it explains
    current = {
        "name": key.name,
        "services": key.services,
        "limits": key_limits(key),
        "credit_limit": key.credit_limit,
        "credit_limit_period": key.credit_limit_period,
        "expires_at": key.expires_at,
    }
    if "credit_limit" in changes and changes["credit_limit"] is None:
        current["credit_limit_period"] = None
    wanted = {**current, **changes}
    name = wanted.pop("name")
    key_settings = key_settings_validate(**wanted, kept=key_named_services(key))
    return key_update(key=key, name=name, key_settings=key_settings)


def key_revoke(*, key: ApiKey, by: User | None = None) -> ApiKey:
    """Takes effect on the next authorize in every process (authorize reads the row each
    time). Revoking twice keeps the first revocation."""
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_by=by, updated_at=timezone.now()
    )
    key.refresh_from_db(fields=["revoked_at", "revoked_by"])
    return key


@transaction.atomic
def member_keys_revoke(*, lab: Lab, user: User, by: User | None) -> int:
    """A member left a lab or was removed from it (by `by`, or by an operator): the keys they
    made in its projects are revoked, as the lab's credits are no longer theirs to spend.
    Returns how many."""
    now = timezone.now()
    theirs = keys_locked(
        ApiKey.objects.filter(project__lab=lab, created_by=user, revoked_at__isnull=True)
    )
    return ApiKey.objects.filter(pk__in=theirs).update(
        revoked_at=now, revoked_by=by, updated_at=now
    )


@transaction.atomic
def key_rotate(*, key: ApiKey) -> tuple[ApiKey, str]:
    """A new secret with the same settings and lookup id. The previous secret keeps working
    for API_KEY_ROTATION_GRACE_SECONDS (a rotation during a grace period ends the older one)."""
    key = ApiKey.objects.select_for_update(no_key=True).get(pk=key.pk)
    if key.revoked_at is not None:
        raise KeySettingsError("A revoked key cannot be rotated.")
    secret = secret_generate()
    now = timezone.now()
    key.previous_secret_hash = key.secret_hash
    key.previous_valid_until = now + timedelta(seconds=settings.API_KEY_ROTATION_GRACE_SECONDS)
    key.secret_hash = secret_hash(secret)
    key.rotated_at = now
    key.save()
    return key, _full_key(key, secret)


def keys_expire(*, now: datetime | None = None) -> int:
    """Mark keys past their expiry (authorize refuses them already; this is for lists and
    audits). Safe to run twice."""
    now = now or timezone.now()
    with transaction.atomic():
        due = keys_locked(
            ApiKey.objects.filter(
                expires_at__lte=now, expired_at__isnull=True, revoked_at__isnull=True
            )
        )
        return ApiKey.objects.filter(pk__in=due).update(expired_at=now, updated_at=now)


# Create, once (POST /api/v1/keys) ------------------------------------------------------------


@dataclass(frozen=True)
class Created:
    key: ApiKey
    full_key: str | None  # None: a replay
    replayed: bool


def _fingerprint(
    project: Project,
    *,
    name: str,
    services: Sequence[str] | None,
    limits: Mapping[str, object] | None,
    credit_limit: Decimal | None,
    credit_limit_period: str | None,
    expires_at: datetime | None,
) -> str:
    """Equal requests give equal digests: service order, omitted nulls and amount formats do
    not matter. Stored on the key's row: the payload must stay as it is."""
    payload = {
        "project": str(project.uuid),
        "name": name.strip(),
        "services": sorted(set(services)) if services is not None else None,
        "limits": {
            scope: {**dict.fromkeys(LIMIT_FIELDS), **given} if isinstance(given, dict) else given
            for scope, given in (limits or {}).items()
        },
        "credit_limit": (str(credits_quantize(credit_limit)) if credit_limit is not None else None),
        "credit_limit_period": credit_limit_period or None,
        "expires_at": expires_at.astimezone(UTC).isoformat() if expires_at else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _first(token: ServiceToken, idempotency_key: str) -> ApiKey | None:
    return (
        ApiKey.objects.select_related("project__lab")
        .filter(created_by_token=token, idempotency_key=idempotency_key)
        .first()
    )


def _replayed(first: ApiKey, fingerprint: str) -> Created:
    if first.request_fingerprint != fingerprint:
        raise IdempotencyConflictError()
    return Created(key=first, full_key=None, replayed=True)


def key_create_for_token(
    *,
    token: ServiceToken,
    project_uuid: uuid_lib.UUID | str,
    name: str,
    services: Sequence[str] | None = None,
    limits: Mapping[str, Mapping[str, object]] | None = None,
    credit_limit: Decimal | None = None,
    credit_limit_period: str | None = None,
    expires_at: datetime | None = None,
    idempotency_key: str | None = None,
) -> Created:
    """A key in a project the token may see, created at most once per Idempotency-Key.

    The Idempotency-Key and the request's digest are written on the key's row in the key's
    transaction; concurrent requests with one key serialize on its unique index and all but one
    replay. A replay answers the key as it is now, without its secret: it was never stored."""
    project = account_selectors.project_get(actor=token, project_uuid=project_uuid)
    fingerprint = _fingerprint(
        project,
        name=name,
        services=services,
        limits=limits,
        credit_limit=credit_limit,
        credit_limit_period=credit_limit_period,
        expires_at=expires_at,
    )
    if idempotency_key is not None:
        first = _first(token, idempotency_key)
        if first is not None:
            return _replayed(first, fingerprint)
    key_settings = key_settings_validate(
        services=services,
        limits=limits,
        credit_limit=credit_limit,
        credit_limit_period=credit_limit_period,
        expires_at=expires_at,
    )
    try:
        with transaction.atomic():
            key, full = key_create(
                project=project, name=name, key_settings=key_settings, created_by_token=token
            )
            if idempotency_key is not None:
                key.idempotency_key, key.request_fingerprint = idempotency_key, fingerprint
                key.save(update_fields=["idempotency_key", "request_fingerprint"])
    except IntegrityError:
        first = _first(token, idempotency_key) if idempotency_key is not None else None
        if first is None:
            raise
        return _replayed(first, fingerprint)
    return Created(key=key, full_key=full, replayed=False)


def quota_reset(
    *, plan_quotas: PlanQuotas, scope: str, actor: User | ServiceToken, at: datetime
) -> bool:
    """Start this period's count of one of a lab's plan quotas ("*" or a service slug) again
    from zero, and record who did. False, changing nothing: the plan has no such quota.
    RateLimiterUnavailable, recording nothing: Redis is down."""
    if not quotas.reset(plan_quotas, scope, at):
        return False
    QuotaReset.objects.create(
        subscription=PlanSubscription.objects.get(uuid=plan_quotas.subscription),
        scope=scope,
        period_index=plan_quotas.bounds(at)[0],
        by_user=actor if isinstance(actor, User) else None,
        by_token=actor if isinstance(actor, ServiceToken) else None,
    )
    return True
