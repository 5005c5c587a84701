"""Writes of API keys: create, revoke, rotate, expire; the cap bookkeeping of authorized jobs.

A key's limits may be tighter than its services' operator defaults, never looser; a missing limit
of the key's own means the default applies (keys/limits.py computes what is in force)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Project, ServiceToken, User
from core.money import AmountError, credits_parse
from core.secrets import lookup_id_generate, secret_generate, secret_hash
from keys.errors import KeySettingsError
from keys.models import ALL_SERVICES, ApiKey, CreditPeriod, KeyLimit
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


def _limit_value(value: object, where: str, errors: dict[str, list[str]]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**53:
        errors.setdefault(where, []).append("Must be a whole number of at least 1, or null.")
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
) -> KeySettings:
    """Checked settings, or KeySettingsError listing every problem at once."""
    errors: dict[str, list[str]] = {}
    now = now or timezone.now()
    wanted = set(services or []) | {slug for slug in (limits or {}) if slug != ALL_SERVICES}
    known = authorizable_services(sorted(wanted))
    if services is not None:
        if not services:
            errors["services"] = ["Give at least one service, or null for all."]
        unknown = sorted(set(services) - set(known))
        if unknown:
            errors.setdefault("services", []).append(f"Unknown service(s): {', '.join(unknown)}.")
    cleaned_limits: dict[str, dict[str, int | None]] = {}
    for slug, given in (limits or {}).items():
        where = f"limits.{slug}"
        if slug != ALL_SERVICES and slug not in known:
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
    name = name.strip()
    if not name or len(name) > 100:
        raise KeySettingsError(details={"name": ["Between 1 and 100 characters."]})
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


def key_revoke(*, key: ApiKey, by: User | None = None) -> ApiKey:
    """Takes effect on the next authorize in every process (authorize reads the row each
    time). Revoking twice keeps the first revocation."""
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_by=by, updated_at=timezone.now()
    )
    key.refresh_from_db(fields=["revoked_at", "revoked_by"])
    return key


@transaction.atomic
def key_rotate(*, key: ApiKey) -> tuple[ApiKey, str]:
    """A new secret with the same settings and lookup id. The previous secret keeps working
    for API_KEY_ROTATION_GRACE_SECONDS (a rotation during a grace period ends the older one)."""
    key = ApiKey.objects.select_for_update().get(pk=key.pk)
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
    return ApiKey.objects.filter(
        expires_at__lte=now, expired_at__isnull=True, revoked_at__isnull=True
    ).update(expired_at=now, updated_at=now)
