"""End-user API keys: `sk_<lookup id>_<secret>`, stored as a peppered HMAC of the secret only."""

from __future__ import annotations

import uuid as uuid_lib

from django.contrib.postgres.fields import ArrayField
from django.db import models

from accounts.models import Project, ServiceToken, User
from core.models import TimeStampedModel
from core.money import MONEY_FIELD
from metering.models import Job, Service

ALL_SERVICES = "*"  # the key-wide scope of a limit


class CreditPeriod(models.TextChoices):
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"


class ApiKey(TimeStampedModel):
    """A project's credential for its end user. The full key is shown once, at creation or
    rotation; after a rotation the previous secret keeps working until `previous_valid_until`."""

    PREFIX = "sk_"

    uuid = models.UUIDField(default=uuid_lib.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=100)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_token = models.ForeignKey(
        ServiceToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lookup_id = models.CharField(max_length=32, unique=True, editable=False)  # authorize's lookup
    secret_hash = models.CharField(max_length=64, editable=False)
    previous_secret_hash = models.CharField(max_length=64, blank=True, editable=False)
    previous_valid_until = models.DateTimeField(null=True, blank=True, editable=False)
    rotated_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)  # marked by the expiry task
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # None: every service; otherwise the slugs of the allowed ones.
    services = ArrayField(models.SlugField(max_length=64), null=True, blank=True)
    credit_limit = models.DecimalField(null=True, blank=True, **MONEY_FIELD)
    credit_limit_period = models.CharField(
        max_length=8, choices=CreditPeriod.choices, blank=True, default=""
    )
    # What the key spent (charged, or held by open authorizations) since credit_period_start;
    # changed only by conditional updates in keys/services.py.
    credit_used = models.DecimalField(default=0, **MONEY_FIELD)
    credit_period_start = models.DateTimeField(null=True, blank=True)
    # The management API's `Idempotency-Key` (unique per creating token, written with the key in
    # one transaction) and a digest of the request it came with: a replay answers from this
    # row, the same key with another request is a 409.
    idempotency_key = models.CharField(  # noqa: DJ001 (null: no key, outside the constraint)
        max_length=200, null=True, blank=True, editable=False
    )
    request_fingerprint = models.CharField(max_length=64, blank=True, default="", editable=False)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at", "-id"]
        indexes = [
            # The portal's and the management API's list of a project's keys.
            models.Index(fields=["project", "-created_at"], name="apikey_project_list"),
            # The expiry task: keys past expires_at not yet marked.
            models.Index(
                fields=["expires_at"],
                name="apikey_expiry_queue",
                condition=models.Q(expires_at__isnull=False, expired_at__isnull=True),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(credit_limit__isnull=True) | models.Q(credit_limit__gte=0),
                name="apikey_credit_limit_nonnegative",
            ),
            models.CheckConstraint(
                condition=models.Q(credit_limit_period__in=["", *CreditPeriod.values]),
                name="apikey_credit_period_valid",
            ),
            # Also the replay lookup of POST /api/v1/keys: (token, Idempotency-Key).
            models.UniqueConstraint(
                fields=["created_by_token", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="apikey_idempotency_key_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.masked})"

    @property
    def masked(self) -> str:
        return f"{self.PREFIX}{self.lookup_id}_…"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class KeyLimit(TimeStampedModel):
    """Per-minute limits of a key, for one service slug or for the whole key (`*`). None: no
    limit of the key's own (the service's default still applies)."""

    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="limits")
    service_slug = models.CharField(max_length=64)  # a service's slug, or ALL_SERVICES
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    units_per_minute = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["service_slug"]
        constraints = [
            models.UniqueConstraint(fields=["key", "service_slug"], name="keylimit_unique_scope"),
            models.CheckConstraint(
                condition=models.Q(requests_per_minute__gte=1) | models.Q(requests_per_minute=None),
                name="keylimit_requests_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(units_per_minute__gte=1) | models.Q(units_per_minute=None),
                name="keylimit_units_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key_id}:{self.service_slug}"


class KeyJob(models.Model):
    """A job opened by an authorize call: which key, what it held against the key's credit cap
    and in which cap period, and when its usage was settled or its hold given back."""

    job = models.OneToOneField(Job, on_delete=models.PROTECT, related_name="+")
    key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="jobs")
    service_slug = models.CharField(max_length=64)
    estimated_units = models.PositiveBigIntegerField()
    cap_held = models.DecimalField(**MONEY_FIELD)  # counted in credit_used until settled
    cap_period_start = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    units = models.PositiveBigIntegerField(null=True, blank=True)  # actual, once settled
    charged = models.DecimalField(null=True, blank=True, **MONEY_FIELD)
    settled_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)  # job cancelled or expired unused
    # An authorize sent with an Idempotency-Key ("<token id>:<key>"): its request's digest and
    # the answer it got, replayed to a retry; written in the transaction that holds the credits.
    idempotency_key = models.CharField(  # noqa: DJ001 (null: no key, outside the constraint)
        max_length=240, null=True, blank=True, editable=False
    )
    request_fingerprint = models.CharField(max_length=64, blank=True, default="", editable=False)
    first_response = models.JSONField(null=True, blank=True, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="keyjob_idempotency_key_unique",
            ),
        ]
        indexes = [
            # Usage of a key today and this month (portal list, GET /api/v1/key): requests by
            # when they were authorized, units and charges by when they were settled.
            models.Index(fields=["key", "created_at"], name="keyjob_key_usage"),
            models.Index(fields=["key", "settled_at"], name="keyjob_key_settled"),
            # The release task: holds still counted against a cap.
            models.Index(
                fields=["created_at"],
                name="keyjob_open_holds",
                condition=models.Q(settled_at__isnull=True, released_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key_id}:{self.job_id}"


class PlanQuota(models.Model):
    """How many requests a plan lets a lab's keys authorize per plan period: for one service, or
    for every service together (no service). Counted in Redis by keys/quotas.py."""

    plan = models.ForeignKey("billing.Plan", on_delete=models.CASCADE, related_name="quotas")
    service = models.ForeignKey(
        Service,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        limit_choices_to={"type": "oneshot"},
        help_text="Empty: every service together.",
    )
    requests = models.PositiveIntegerField(
        help_text="Authorized requests per plan period; 0: the plan does not allow the service."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["plan", "service"],
                nulls_distinct=False,
                name="plan_quota_one_per_service",
                violation_error_message="This plan already has a quota for that service.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.requests} requests of {self.service or 'every service'} on {self.plan}"


class QuotaReset(models.Model):
    """An operator started a quota's count of one plan period again from zero (the count is in
    Redis; this row is the record of who did it, and when)."""

    subscription = models.ForeignKey(
        "billing.PlanSubscription", on_delete=models.PROTECT, related_name="quota_resets"
    )
    scope = models.CharField(max_length=64, help_text='A service slug, or "*": every service.')
    period_index = models.PositiveIntegerField()
    by_user = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    by_token = models.ForeignKey(
        ServiceToken, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.scope} of {self.subscription}, period {self.period_index + 1}"
