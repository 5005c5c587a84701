"""The double-entry ledger: accounts, journal entries and their lines, and credit grants (lots).

Only billing/services.py writes these tables; everything else reads through billing/selectors.py.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Lab, Project, ServiceToken
from core.models import TimeStampedModel
from core.money import MONEY_FIELD


class AccountType(models.TextChoices):
    SYSTEM = "sys", "System"
    LAB = "vlab", "Virtual lab"
    PROJECT = "proj", "Project"
    RESERVATION = "rsv", "Reservation"


class LedgerAccount(TimeStampedModel):
    """One system account (source and sink, may go negative), one per lab, and a project and a
    reservation account per project. `balance` caches the sum of the account's lines."""

    # The system account's id until a client claims it with POST /api/accounting/account/system.
    UNCLAIMED_SYSTEM_UUID = uuid.UUID("00000000-0000-0000-0000-000000000000")
    # Below every generated id, so the system account is always locked first.
    SYSTEM_ID = 0

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    type = models.CharField(max_length=4, choices=AccountType.choices)
    name = models.CharField(max_length=200, blank=True)
    lab = models.ForeignKey(Lab, null=True, on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey(Project, null=True, on_delete=models.PROTECT, related_name="+")
    balance = models.DecimalField(default=0, **MONEY_FIELD)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["type"], condition=Q(type="sys"), name="ledger_one_system_account"
            ),
            models.UniqueConstraint(
                fields=["lab"], condition=Q(type="vlab"), name="ledger_one_account_per_lab"
            ),
            models.UniqueConstraint(
                fields=["project", "type"],
                condition=Q(type__in=["proj", "rsv"]),
                name="ledger_one_account_per_project_and_type",
            ),
            models.CheckConstraint(
                condition=(
                    Q(type="sys", lab__isnull=True, project__isnull=True)
                    | Q(type="vlab", lab__isnull=False, project__isnull=True)
                    | Q(type__in=["proj", "rsv"], lab__isnull=False, project__isnull=False)
                ),
                name="ledger_account_owner_matches_type",
            ),
            models.CheckConstraint(
                condition=Q(type__in=["sys", "proj"]) | Q(balance__gte=0),
                name="ledger_lab_and_reservation_never_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_type_display()} {self.name}"


class GrantCategory(models.TextChoices):
    PAID = "paid", "Paid"
    PROMOTIONAL = "promotional", "Promotional"


class GrantSource(models.TextChoices):
    STRIPE = "stripe", "Stripe payment"
    OPERATOR = "operator", "Operator"
    PLAN = "plan", "Plan"
    API = "api", "API"


# Lower burns first: promotional credit is spent before paid credit unless an operator says so.
DEFAULT_PRIORITY = {GrantCategory.PROMOTIONAL: 10, GrantCategory.PAID: 50}


class Grant(TimeStampedModel):
    """A lot of credits that entered a lab. Lines carry their grant, so every balance is a sum of
    per-grant remainders, spent in burn order: priority, soonest expiry (none last), oldest."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    lab = models.ForeignKey(Lab, on_delete=models.PROTECT, related_name="grants")
    amount = models.DecimalField(**MONEY_FIELD)
    category = models.CharField(max_length=16, choices=GrantCategory.choices)
    priority = models.PositiveSmallIntegerField()
    effective_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=16, choices=GrantSource.choices)
    source_ref = models.CharField(max_length=255, blank=True)
    reason = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["priority", "expires_at", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="grant_amount_positive"),
            models.CheckConstraint(
                condition=Q(expires_at__isnull=True) | Q(expires_at__gt=models.F("effective_at")),
                name="grant_expires_after_effective",
            ),
        ]
        indexes = [
            # The expiry sweep: grants past expires_at not yet expired.
            models.Index(
                fields=["expires_at"],
                condition=Q(
                    expired_at__isnull=True, voided_at__isnull=True, expires_at__isnull=False
                ),
                name="grant_expiry_queue",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_category_display()} grant {self.amount} ({self.lab})"

    def status(self) -> str:
        """voided, expired, scheduled (not in effect yet) or active."""
        now = timezone.now()
        if self.voided_at:
            return "voided"
        if self.expired_at or (self.expires_at and self.expires_at <= now):
            return "expired"
        return "scheduled" if self.effective_at > now else "active"


class EntryType(models.TextChoices):
    TOP_UP = "top-up", "Top-up"
    ASSIGN = "assign", "Assign budget"
    REVERSE = "reverse", "Reverse budget"
    MOVE = "move", "Move budget"
    GRANT = "grant", "Grant budget"
    DEPLETE = "deplete", "Deplete"
    RESERVE = "reserve", "Reserve"
    RELEASE = "release", "Release"
    CHARGE = "charge", "Charge"
    REFUND = "refund", "Refund"
    EXPIRE = "expire", "Expire grant"
    VOID = "void", "Void grant"


class JournalEntry(models.Model):
    """One money movement. Its lines sum to zero (a database trigger refuses anything else)."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    type = models.CharField(max_length=16, choices=EntryType.choices)
    created_at = models.DateTimeField(default=timezone.now)
    # Who or what caused it: a person (operator or lab admin), a service token, or the system.
    # No index on the actors: no query looks entries up by them, and each index costs every
    # movement a write (billing_ledger benchmark).
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    actor_token = models.ForeignKey(
        ServiceToken,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    reason = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # The metering job a hold, release or charge belongs to (metering depends on billing, so a
    # UUID, not a foreign key): what a job still holds is the sum of its entries' lines.
    job_uuid = models.UUIDField(null=True, blank=True)
    # A replay with the same key returns this entry instead of moving money again.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    request_fingerprint = models.CharField(max_length=64, blank=True)

    class Meta:
        verbose_name_plural = "journal entries"
        ordering = ["-created_at", "-id"]
        indexes = [
            # job_held: the entries of one job.
            models.Index(
                fields=["job_uuid"], condition=Q(job_uuid__isnull=False), name="entry_job"
            ),
            # charges_by_hour (usage rollups): entries of a time range. BRIN: the journal is
            # append-only in time order, so a tiny index serves ranges and costs inserts nothing.
            BrinIndex(fields=["created_at"], name="entry_created_brin"),
        ]
        constraints = [
            # Replays find the first entry by key; entries without a key stay out of the index.
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="journal_entry_idempotency_key_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_type_display()} #{self.pk}"


class JournalLine(models.Model):
    entry = models.ForeignKey(JournalEntry, on_delete=models.PROTECT, related_name="lines")
    # account: served by line_account_history; grant: no query reads lines by grant.
    account = models.ForeignKey(
        LedgerAccount, on_delete=models.PROTECT, related_name="lines", db_index=False
    )
    grant = models.ForeignKey(Grant, on_delete=models.PROTECT, related_name="lines", db_index=False)
    amount = models.DecimalField(**MONEY_FIELD)  # signed: negative leaves the account

    class Meta:
        indexes = [
            # History of one account, newest first (selectors.account_history).
            models.Index(fields=["account", "-id"], name="line_account_history"),
        ]
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="line_amount_not_zero"),
        ]

    def __str__(self) -> str:
        return f"{self.amount} on account {self.account_id} (grant {self.grant_id})"


class GrantBalance(models.Model):
    """What is left of one grant in one account: the cached sum of their lines, so burn order
    never has to scan history."""

    # account: served by the unique (account, grant) index; grant: the expiry and void sweeps.
    account = models.ForeignKey(
        LedgerAccount, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    grant = models.ForeignKey(Grant, on_delete=models.PROTECT, related_name="balances")
    balance = models.DecimalField(default=0, **MONEY_FIELD)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "grant"], name="grant_balance_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.balance} of grant {self.grant_id} on account {self.account_id}"
