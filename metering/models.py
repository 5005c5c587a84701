"""What is sold and at what price: services, tiered prices with validity windows and lab
overrides, lab discounts, jobs (reservations, usage, charges) and batch usage events."""

from __future__ import annotations

import uuid as uuid_lib

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import Lab, Project, ServiceToken
from core.models import TimeStampedModel
from core.money import MONEY_FIELD, decimal_plain


class ServiceType(models.TextChoices):
    ONESHOT = "oneshot", "One-shot"
    LONGRUN = "longrun", "Long-running"
    STORAGE = "storage", "Storage"


class Service(TimeStampedModel):
    """A thing sold, named by the accounting-service's subtype (`ml-llm`, `single-cell-sim`)."""

    slug = models.SlugField(max_length=64)
    type = models.CharField(max_length=8, choices=ServiceType.choices)
    name = models.CharField(max_length=200)
    unit_label = models.CharField(max_length=32, help_text="e.g. token, second, byte-second")
    display_scale = models.PositiveBigIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Show prices per this many units, e.g. 1000 for 'per 1K tokens'.",
    )
    display_unit = models.CharField(
        max_length=32,
        blank=True,
        help_text="What the display scale's units are called, if not the scale and the unit "
        "label ('1K tokens'): e.g. 'GiB-month' for byte-seconds at a scale of "
        "2783138807808000, a GiB for 30 days.",
    )
    is_active = models.BooleanField(default=True)
    is_legacy = models.BooleanField(
        default=False, help_text="Refused for new prices, estimates and reservations."
    )
    # Operator defaults for end-user API keys (keys app): a key may set tighter, never looser.
    key_requests_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests a minute an API key gets by default, and the most it may set; "
        "empty: no limit.",
    )
    key_units_per_minute = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Units a minute an API key gets by default, and the most it may set; empty: "
        "no limit.",
    )

    class Meta:
        ordering = ["slug", "type"]
        constraints = [
            # The accounting-service prices a (type, subtype) pair, so one slug may be sold both
            # as a one-shot and as a long-running service.
            models.UniqueConstraint(fields=["type", "slug"], name="service_unique_type_slug"),
        ]

    def __str__(self) -> str:
        return f"{self.slug} ({self.type})"


class Price(TimeStampedModel):
    """A price version: tiers valid from `valid_from` until `valid_to` (open-ended if empty),
    for every lab or, with `lab`, one lab only. Append-only once a job has used it."""

    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="prices")
    lab = models.ForeignKey(
        Lab,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="prices",
        help_text="Empty: the default price for every lab.",
    )
    valid_from = models.DateTimeField()
    valid_to = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["service__slug", "-valid_from", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(valid_to__isnull=True) | Q(valid_to__gt=F("valid_from")),
                name="price_valid_to_after_valid_from",
                violation_error_message="A price's valid-to must be after its valid-from.",
            ),
        ]
        indexes = [
            # price_current: the latest price of a service (for a lab) valid at a moment.
            models.Index(fields=["service", "lab", "-valid_from"], name="price_lookup"),
        ]

    def __str__(self) -> str:
        scope = f" for {self.lab}" if self.lab_id else ""
        return f"{self.service} from {self.valid_from:%Y-%m-%d %H:%M}{scope}"


class PriceTier(models.Model):
    """Usage in [min_quantity, max_quantity) costs `multiplier` per unit, plus `fixed_cost`
    once, when usage first goes above `min_quantity`."""

    price = models.ForeignKey(Price, on_delete=models.CASCADE, related_name="tiers")
    min_quantity = models.PositiveBigIntegerField()
    max_quantity = models.PositiveBigIntegerField(null=True, blank=True)
    fixed_cost = models.DecimalField(max_digits=30, decimal_places=12, default=0)
    # Per unit, at full precision: a storage price per byte-second is around 1e-17.
    multiplier = models.DecimalField(max_digits=60, decimal_places=40)

    class Meta:
        ordering = ["min_quantity"]
        constraints = [
            models.UniqueConstraint(fields=["price", "min_quantity"], name="tier_unique_start"),
            models.CheckConstraint(
                condition=Q(max_quantity__isnull=True) | Q(max_quantity__gt=F("min_quantity")),
                name="tier_max_above_min",
                violation_error_message="A tier's max quantity must be above its min quantity.",
            ),
            models.CheckConstraint(
                condition=Q(fixed_cost__gte=0, multiplier__gte=0),
                name="tier_costs_not_negative",
                violation_error_message="A tier's fixed cost and multiplier cannot be negative.",
            ),
        ]

    def __str__(self) -> str:
        top = "∞" if self.max_quantity is None else self.max_quantity
        fixed, multiplier = decimal_plain(self.fixed_cost), decimal_plain(self.multiplier)
        return f"[{self.min_quantity}, {top}): {fixed} + {multiplier}/unit"


class Discount(TimeStampedModel):
    """A fraction off a lab's charges while valid; the latest `valid_from` wins."""

    lab = models.ForeignKey(Lab, on_delete=models.PROTECT, related_name="discounts")
    discount = models.DecimalField(
        max_digits=7,
        decimal_places=6,
        validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text="The fraction off the lab's charges: 0.2 is 20 % off.",
    )
    valid_from = models.DateTimeField()
    valid_to = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["lab_id", "-valid_from", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(discount__gte=0, discount__lte=1),
                name="discount_between_0_and_1",
                violation_error_message="A discount is a fraction from 0 to 1: 0.2 is 20 % off.",
            ),
            models.CheckConstraint(
                condition=Q(valid_to__isnull=True) | Q(valid_to__gt=F("valid_from")),
                name="discount_valid_to_after_valid_from",
                violation_error_message="A discount's valid-to must be after its valid-from.",
            ),
        ]

    def __str__(self) -> str:
        return f"{decimal_plain(self.discount * 100)}% off for {self.lab}"


class Job(TimeStampedModel):
    """One billable piece of work: its hold (reservation) and, later, its usage and charges.
    `uuid` is the job_id callers see."""

    uuid = models.UUIDField(default=uuid_lib.uuid4, unique=True, editable=False)
    lab = models.ForeignKey(Lab, on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="jobs")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="jobs")
    kind = models.CharField(max_length=8, choices=ServiceType.choices)  # the service's type
    # The price it was reserved (or, for storage, last charged) at.
    price = models.ForeignKey(Price, null=True, on_delete=models.PROTECT, related_name="jobs")
    user_uuid = models.UUIDField(null=True, blank=True)
    group_uuid = models.UUIDField(null=True, blank=True)
    name = models.CharField(max_length=255, blank=True)
    reservation_params = models.JSONField(default=dict, blank=True)
    usage_params = models.JSONField(default=dict, blank=True)
    reserved_amount = models.DecimalField(default=0, **MONEY_FIELD)
    reserved_at = models.DateTimeField(null=True, blank=True)
    # An unused reservation is released after this moment (RESERVATION_TTL).
    reservation_expires_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    last_alive_at = models.DateTimeField(null=True, blank=True)
    last_charged_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # A long-running job whose heartbeats stopped: closed by the charger at this moment.
    expired_at = models.DateTimeField(null=True, blank=True)
    # Charged for good (final charge made, hold released): it shows in reports from then on.
    closed_at = models.DateTimeField(null=True, blank=True)
    # Net of refunds; equals the job's charge and refund lines on the system account.
    charged_amount = models.DecimalField(default=0, **MONEY_FIELD)
    # A reservation sent with an Idempotency-Key ("token:<id>:<key>", core.accounting), and its
    # request's digest: a retry gets this job back instead of a second hold.
    idempotency_key = models.CharField(  # noqa: DJ001 (null: no key, outside the constraint)
        max_length=255, null=True, blank=True, editable=False
    )
    # null: a process older than this column, still serving during a deploy, writes none.
    request_fingerprint = models.CharField(  # noqa: DJ001
        max_length=64, null=True, blank=True, editable=False
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # reservations_expire: unused holds past their TTL.
            models.Index(
                fields=["reservation_expires_at"],
                condition=Q(
                    started_at__isnull=True, cancelled_at__isnull=True, finished_at__isnull=True
                ),
                name="job_reservation_expiry_queue",
            ),
            # The chargers: started long-running and storage jobs not yet closed.
            models.Index(
                fields=["kind", "last_charged_at"],
                condition=Q(started_at__isnull=False, closed_at__isnull=True),
                name="job_charge_queue",
            ),
            # job_report: closed jobs of a project / of a lab / of everyone, newest first.
            models.Index(
                fields=["project", "-started_at", "id"],
                condition=Q(closed_at__isnull=False),
                name="job_report_project",
            ),
            models.Index(
                fields=["lab", "-started_at", "id"],
                condition=Q(closed_at__isnull=False),
                name="job_report_lab",
            ),
            models.Index(
                fields=["-started_at", "id"],
                condition=Q(closed_at__isnull=False),
                name="job_report_all",
            ),
            # usage_rollup: the jobs closed in the hours it rebuilds; a lab's usage download.
            models.Index(
                fields=["closed_at"], condition=Q(closed_at__isnull=False), name="job_closed"
            ),
            models.Index(
                fields=["lab", "closed_at"],
                condition=Q(closed_at__isnull=False),
                name="job_closed_lab",
            ),
            # longrun_open_list: long-running jobs neither finished nor cancelled, oldest first.
            models.Index(
                fields=["created_at"],
                condition=Q(kind="longrun", finished_at__isnull=True, cancelled_at__isnull=True),
                name="job_longrun_open",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(cancelled_at__isnull=True) | Q(started_at__isnull=True),
                name="job_cancelled_only_before_start",
            ),
            # A project holds storage through one open interval at a time.
            models.UniqueConstraint(
                fields=["project"],
                condition=Q(kind="storage", finished_at__isnull=True),
                name="job_one_open_storage_interval",
            ),
            models.CheckConstraint(
                condition=Q(charged_amount__gte=0), name="job_charged_not_negative"
            ),
            # Also the replay lookup of a reservation's Idempotency-Key.
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="job_idempotency_key_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.service} job {self.uuid}"


class UsageEventOutcome(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    REJECTED = "rejected", "Rejected"


class UsageEvent(models.Model):
    """One event of the batch ingestion API. Its id is unique per token, so a resent event finds
    its first outcome. Accepted events are charged by the settlement task, aggregated per
    project and service. Rejected ones are kept too: a resend gets the same answer."""

    token = models.ForeignKey(
        ServiceToken, on_delete=models.PROTECT, related_name="+", db_index=False
    )  # served by usage_event_unique_per_token
    event_id = models.CharField(max_length=255)
    project = models.ForeignKey(
        Project, null=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    service = models.ForeignKey(
        Service, null=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    job = models.ForeignKey(
        Job, null=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    # The end-user API key, if any: its id or its prefix (sk_<lookup id>) attribute the event
    # to that key of the event's project (keys.selectors.key_event_units); other text is kept.
    key_ref = models.CharField(max_length=64, blank=True)
    units = models.PositiveBigIntegerField(default=0)
    occurred_at = models.DateTimeField(null=True)
    received_at = models.DateTimeField(default=timezone.now)
    outcome = models.CharField(max_length=8, choices=UsageEventOutcome.choices)
    reason = models.CharField(max_length=255, blank=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["token", "event_id"], name="usage_event_unique_per_token"
            ),
        ]
        indexes = [
            # usage_events_settle: accepted events not charged yet, oldest first.
            models.Index(
                fields=["id"],
                condition=Q(outcome="accepted", settled_at__isnull=True),
                name="usage_event_settle_queue",
            ),
            # A key's usage page: accepted events naming a key (most name none).
            models.Index(
                fields=["project", "key_ref", "occurred_at"],
                condition=Q(outcome="accepted") & ~Q(key_ref=""),
                name="usage_event_key",
            ),
        ]

    def __str__(self) -> str:
        return f"usage event {self.event_id} ({self.outcome})"


class RollupPeriod(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"


class UsageRollup(models.Model):
    """Usage of one project and service in one hour or day (UTC), for dashboards and reports:
    the credits charged in it (less refunds), the charges, and the jobs closed and units used
    (a job's units count when it closes; batch events when they are settled). Rebuilt by
    metering/rollups.py for the recent periods on every run."""

    period = models.CharField(max_length=4, choices=RollupPeriod.choices)
    period_start = models.DateTimeField()
    lab = models.ForeignKey(Lab, on_delete=models.PROTECT, related_name="+", db_index=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="+", db_index=False)
    service = models.ForeignKey(
        Service, null=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    amount = models.DecimalField(default=0, **MONEY_FIELD)
    charges = models.PositiveIntegerField(default=0)
    jobs_closed = models.PositiveIntegerField(default=0)
    # NUMERIC: a petabyte held for a few hours is more byte-seconds than a bigint holds.
    units = models.DecimalField(max_digits=40, decimal_places=0, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["period", "period_start", "project", "service"],
                nulls_distinct=False,
                name="usage_rollup_unique",
            ),
        ]
        indexes = [
            # Dashboards: a lab's or a project's recent periods.
            models.Index(fields=["lab", "period", "-period_start"], name="usage_rollup_lab"),
            models.Index(
                fields=["project", "period", "-period_start"], name="usage_rollup_project"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.period} {self.period_start:%Y-%m-%d %H:00} {self.project_id}: {self.amount}"
