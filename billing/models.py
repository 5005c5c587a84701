"""The double-entry ledger: accounts, journal entries and their lines, and credit grants (lots).

Only billing/services.py writes these tables; everything else reads through billing/selectors.py.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Lab, Project, ServiceToken
from billing.currency import amount_format
from core.models import TimeStampedModel
from core.money import MAX_CREDITS, MONEY_FIELD, decimal_plain


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

    def is_spendable_at(self, at: datetime) -> bool:
        """Neither voided nor expired (by the sweep, or by its date already)."""
        return (
            self.voided_at is None
            and self.expired_at is None
            and (self.expires_at is None or self.expires_at > at)
        )

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
    # Stripe refunds and disputes take a paid grant's credits back; a later top-up repays a debt.
    CHARGEBACK = "chargeback", "Refund or dispute"
    DEBT = "debt", "Debt repayment"
    # A dispute closed without the funds leaving us (won, or an inquiry): credits given back.
    REINSTATE = "reinstate", "Dispute won"


# Every type but a job's hold, release, charge and refund: what a lab's activity lists. Those
# four are the bulk of the journal (several a job); these are a small part of it.
MONEY_MOVEMENT_TYPES = [
    entry_type
    for entry_type in EntryType.values
    if entry_type not in (EntryType.RESERVE, EntryType.RELEASE, EntryType.CHARGE, EntryType.REFUND)
]


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
            # lab_activity: the newest money movements, without walking the usage entries.
            models.Index(
                fields=["-id"],
                condition=Q(type__in=MONEY_MOVEMENT_TYPES),
                name="entry_money_movements",
            ),
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


# Stripe top-ups (billing/topups.py, billing/stripe_events.py) ----------------------------------


class TopUpKind(models.TextChoices):
    CHECKOUT = "checkout", "Checkout"
    AUTO = "auto", "Auto-recharge"


class TopUpStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PAID = "paid", "Paid"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"
    REFUNDED = "refunded", "Refunded"


# Statuses of a top-up whose credits were granted.
CREDITED_STATUSES = [TopUpStatus.PAID, TopUpStatus.REFUNDED]


class StripeCustomer(TimeStampedModel):
    """A lab's one Stripe customer, created once and reused, and the payment method a Checkout
    saved for auto-recharge."""

    lab = models.OneToOneField(Lab, on_delete=models.PROTECT, related_name="stripe_customer")
    customer_id = models.CharField(max_length=255, unique=True)
    payment_method_id = models.CharField(max_length=255, blank=True)
    payment_method_label = models.CharField(max_length=100, blank=True)

    def __str__(self) -> str:
        return f"{self.customer_id} ({self.lab})"


# Stripe's closed dispute statuses, for people; an open one is "disputed" or "dispute inquiry".
DISPUTE_LABELS = {
    "won": "dispute won",
    "lost": "dispute lost",
    "prevented": "dispute prevented",
    "warning_closed": "inquiry closed",
}


class TopUp(TimeStampedModel):
    """One attempt to buy credits. Its uuid derives the idempotency key of every Stripe call
    made for it; the grant it paid for is created once, when Stripe says it is paid."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    lab = models.ForeignKey(Lab, on_delete=models.PROTECT, related_name="topups")
    # Credits go straight to this project's budget; none: to the lab's balance.
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=TopUpKind.choices)
    status = models.CharField(
        max_length=16, choices=TopUpStatus.choices, default=TopUpStatus.PENDING
    )
    currency = models.CharField(max_length=3)
    amount_minor = models.PositiveBigIntegerField()  # what the payer pays, in minor units
    credits = models.DecimalField(**MONEY_FIELD)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    save_payment_method = models.BooleanField(default=False)
    stripe_session_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    stripe_payment_intent_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    stripe_charge_id = models.CharField(max_length=255, blank=True)
    stripe_invoice_id = models.CharField(max_length=255, blank=True)
    checkout_url = models.URLField(max_length=2000, blank=True)
    receipt_url = models.URLField(max_length=2000, blank=True)
    invoice_url = models.URLField(max_length=2000, blank=True)
    grant = models.OneToOneField(
        Grant, null=True, blank=True, on_delete=models.PROTECT, related_name="topup"
    )
    paid_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    failure_message = models.TextField(blank=True)
    # As Stripe reports them (cumulative): what was refunded and disputed of the payment.
    refunded_minor = models.PositiveBigIntegerField(default=0)
    disputed_minor = models.PositiveBigIntegerField(default=0)
    dispute_id = models.CharField(max_length=255, blank=True)
    dispute_reason = models.CharField(max_length=100, blank=True)
    dispute_status = models.CharField(max_length=32, blank=True)  # Stripe's, as last read
    # Credits taken back for refunds and disputes: from the grant, or recorded as a debt.
    credits_taken_back = models.DecimalField(default=0, **MONEY_FIELD)
    receipt_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=TopUpStatus.values), name="topup_status_valid"
            ),
            models.CheckConstraint(condition=Q(kind__in=TopUpKind.values), name="topup_kind_valid"),
            models.CheckConstraint(
                condition=Q(amount_minor__gt=0, credits__gt=0), name="topup_amount_positive"
            ),
            models.CheckConstraint(
                condition=~Q(status__in=CREDITED_STATUSES) | Q(grant__isnull=False),
                name="topup_credited_has_grant",
            ),
            models.CheckConstraint(
                condition=Q(credits_taken_back__gte=0, credits_taken_back__lte=models.F("credits")),
                name="topup_taken_back_within_credits",
            ),
            # At most one auto-recharge payment in flight per lab.
            models.UniqueConstraint(
                fields=["lab"],
                condition=Q(kind="auto", status="pending"),
                name="topup_one_auto_recharge_in_flight",
            ),
        ]
        indexes = [
            # topup_list: a lab's top-ups, newest first.
            models.Index(fields=["lab", "-created_at"], name="topup_lab_history"),
        ]

    def __str__(self) -> str:
        return f"Top-up {self.uuid} ({self.lab}, {self.status})"

    @property
    def dispute_label(self) -> str:
        """Where its dispute stands, in a few words ("" without one)."""
        if not self.dispute_id:
            return ""
        if self.dispute_status in DISPUTE_LABELS:
            return DISPUTE_LABELS[self.dispute_status]
        return "dispute inquiry" if self.dispute_status.startswith("warning_") else "disputed"

    @property
    def amount_text(self) -> str:
        """As pages show it: "1,250.00 USD"."""
        return amount_format(self.amount_minor, currency=self.currency)


class StripeEvent(models.Model):
    """A Stripe event we acted on, recorded in the transaction of its effect: a replay finds it
    and does nothing."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    topup = models.ForeignKey(
        TopUp, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    received_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class AutoRecharge(TimeStampedModel):
    """A lab's auto-recharge: when spending takes the target's balance (the lab's own, or one
    project's budget) under `threshold` credits, pay `amount_minor` with the saved card (or the
    smallest multiple of it that restores the threshold), at most `monthly_cap_minor` a
    calendar month (UTC)."""

    lab = models.OneToOneField(Lab, on_delete=models.PROTECT, related_name="auto_recharge")
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    enabled = models.BooleanField(default=False)
    threshold = models.DecimalField(**MONEY_FIELD)
    currency = models.CharField(max_length=3)
    amount_minor = models.PositiveBigIntegerField()
    monthly_cap_minor = models.PositiveBigIntegerField()
    consecutive_failures = models.PositiveSmallIntegerField(default=0)
    disabled_reason = models.TextField(blank=True)
    # The target's newest ledger line when its balance was last seen at or above the threshold,
    # or a recharge that restores it started: the next recharge waits for spending past it, so
    # refunds, expiries or an operator's depletion alone do not charge the card. Cleared when
    # settings are saved and when a payment fails.
    recharged_after_line = models.BigIntegerField(null=True, blank=True, editable=False)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(threshold__gte=0), name="auto_recharge_threshold"),
            models.CheckConstraint(
                condition=Q(amount_minor__gt=0, monthly_cap_minor__gte=models.F("amount_minor")),
                name="auto_recharge_cap_covers_amount",
            ),
        ]

    def __str__(self) -> str:
        return f"Auto-recharge of {self.lab} ({'on' if self.enabled else 'off'})"


# A debt with something left to repay: neither repaid nor forgiven in full.
DEBT_OPEN = Q(repaid__lt=models.F("amount") - models.F("forgiven"))


class LabDebt(TimeStampedModel):
    """Credits a lab owes: a refund or dispute took back more than was left of its grant. The
    lab's next paid top-ups repay it first (billing/topups.py); a dispute closed in the lab's
    favour forgives what is still open of it."""

    lab = models.ForeignKey(Lab, on_delete=models.PROTECT, related_name="debts")
    topup = models.ForeignKey(TopUp, on_delete=models.PROTECT, related_name="debts")
    amount = models.DecimalField(**MONEY_FIELD)
    repaid = models.DecimalField(default=0, **MONEY_FIELD)
    forgiven = models.DecimalField(default=0, **MONEY_FIELD)
    reason = models.CharField(max_length=100)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    amount__gt=0,
                    repaid__gte=0,
                    forgiven__gte=0,
                    repaid__lte=models.F("amount") - models.F("forgiven"),
                ),
                name="lab_debt_settled_within_amount",
            ),
        ]
        indexes = [
            # debts_repay: a lab's open debts, oldest first.
            models.Index(
                fields=["lab", "created_at"],
                condition=DEBT_OPEN,
                name="lab_debt_open",
            ),
        ]

    @property
    def open(self) -> Decimal:
        return self.amount - self.repaid - self.forgiven

    def __str__(self) -> str:
        return f"Debt of {self.lab}: {self.open} of {self.amount}"


class BalanceAlert(TimeStampedModel):
    """A mail to the lab's owners and admins when a balance (the lab's own, or one project's
    budget) is under `threshold` credits: once, then again only after the balance has been
    back at or above it (billing/balance_alerts.py)."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="balance_alerts")
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    threshold = models.DecimalField(**MONEY_FIELD)
    # When the balance was last found under the threshold; None: armed.
    notified_at = models.DateTimeField(null=True, blank=True)
    # When that fall's mail was claimed for sending (None: not yet; the sweep queues it again).
    mailed_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(threshold__gte=0), name="balance_alert_threshold"),
            models.UniqueConstraint(
                fields=["lab", "project", "threshold"],
                nulls_distinct=False,
                name="balance_alert_unique",
                violation_error_message="This balance already has an alert at that threshold.",
            ),
        ]

    def __str__(self) -> str:
        target = f"project {self.project}" if self.project_id else f"lab {self.lab}"
        return f"Alert under {self.threshold_text} credits on {target}"

    @property
    def threshold_text(self) -> str:
        return decimal_plain(self.threshold)  # 12.5, not 12.500000


class PlanPeriod(models.TextChoices):
    MONTHLY = "monthly", "Monthly"
    WEEKLY = "weekly", "Weekly"
    DAILY = "daily", "Daily"  # a trial of 30 days is 30 daily periods, or one of daily credits


# What a plan's term counts: "3 months", "30 days".
PERIOD_UNITS = {PlanPeriod.MONTHLY: "month", PlanPeriod.WEEKLY: "week", PlanPeriod.DAILY: "day"}


class PlanRollover(models.TextChoices):
    RESET = "reset", "Reset to the plan's credits each period"
    CARRY = "carry", "Carry over what is left, up to a maximum"


class Plan(TimeStampedModel):
    """Credits a lab receives every period, as a grant that expires at the period's end
    (billing/plans.py). Changes apply from each subscriber's next period."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    credits = models.DecimalField(help_text="Credits granted every period.", **MONEY_FIELD)
    period = models.CharField(max_length=8, choices=PlanPeriod.choices)
    rollover = models.CharField(
        max_length=8, choices=PlanRollover.choices, default=PlanRollover.RESET
    )
    rollover_max = models.DecimalField(
        null=True,
        blank=True,
        help_text="Carry over: at most this many unused credits move to the next period.",
        **MONEY_FIELD,
    )
    category = models.CharField(
        max_length=16, choices=GrantCategory.choices, default=GrantCategory.PROMOTIONAL
    )
    priority = models.PositiveSmallIntegerField(
        default=DEFAULT_PRIORITY[GrantCategory.PROMOTIONAL],
        help_text="Burn order of the plan's grants: lower burns first.",
    )
    periods = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="A trial or a fixed term: the plan ends after this many periods, and the lab "
        "is then on no plan. Empty: it renews until ended.",
    )
    is_default = models.BooleanField(
        default=False, help_text="Given to every new user's personal lab at signup."
    )
    active = models.BooleanField(
        default=True, help_text="Inactive: no new subscriptions; current ones keep renewing."
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(credits__gt=0), name="plan_credits_positive"),
            models.CheckConstraint(
                condition=Q(rollover=PlanRollover.RESET, rollover_max__isnull=True)
                | Q(rollover=PlanRollover.CARRY, rollover_max__gt=0),
                name="plan_rollover_max_with_carry",
                violation_error_message="Carry-over needs a maximum above 0; reset takes none.",
            ),
            models.CheckConstraint(
                # A period's grant (credits and what is carried over) must be one amount.
                condition=Q(credits__lt=MAX_CREDITS - Coalesce("rollover_max", Value(0))),
                name="plan_period_grant_in_range",
                violation_error_message="The credits and the most carried over must be below "
                "10^12 together.",
            ),
            models.CheckConstraint(
                condition=Q(periods__isnull=True) | Q(periods__gte=1),
                name="plan_periods_at_least_one",
                violation_error_message="A plan lasts at least one period.",
            ),
            models.CheckConstraint(
                condition=Q(is_default=False) | Q(active=True),
                name="plan_default_is_active",
                violation_error_message="The default plan must be active.",
            ),
            models.UniqueConstraint(
                fields=["is_default"],
                condition=Q(is_default=True),
                name="plan_one_default",
                violation_error_message="Another plan is already the default.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def term(self) -> str:
        """How long the plan lasts: `3 months`, `1 week`; empty: until ended."""
        if self.periods is None:
            return ""
        unit = PERIOD_UNITS[PlanPeriod(self.period)]
        return f"{self.periods} {unit}{'' if self.periods == 1 else 's'}"

    @property
    def summary(self) -> str:
        """`25 credits monthly, unused credits carried over up to 10`; a trial: `5 credits
        monthly for 1 month, unused credits expire at the end of each period`."""
        word = "credit" if self.credits == 1 else "credits"
        text = f"{decimal_plain(self.credits)} {word} {self.get_period_display().lower()}"
        if self.term:
            text = f"{text} for {self.term}"
        if self.rollover == PlanRollover.CARRY and self.rollover_max and self.periods != 1:
            return f"{text}, unused credits carried over up to {decimal_plain(self.rollover_max)}"
        return f"{text}, unused credits expire at the end of each period"


class PlanSubscription(TimeStampedModel):
    """A lab on a plan. Period k runs from `started_at` + k periods to + k+1 (calendar months
    clamp to the month's end: a plan started on 31 January renews on 28 February); the
    period's grant lands in `project`'s budget and expires when the period ends."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    lab = models.ForeignKey(Lab, on_delete=models.PROTECT, related_name="plan_subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField()
    period_index = models.PositiveIntegerField(default=0)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    grant = models.ForeignKey(
        Grant, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    ended_at = models.DateTimeField(null=True, blank=True)
    # Who put the lab on the plan, and who ended it (an operator, or a platform's token; none:
    # the signup's default plan). Ended by a new plan: whoever chose that one.
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_by_token = models.ForeignKey(
        ServiceToken, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    ended_by_token = models.ForeignKey(
        ServiceToken, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["lab"],
                condition=Q(ended_at__isnull=True),
                name="plan_subscription_one_open_per_lab",
                violation_error_message="This lab is already on a plan.",
            ),
            models.CheckConstraint(
                condition=Q(period_end__gt=models.F("period_start")),
                name="plan_subscription_period_ordered",
            ),
        ]
        indexes = [
            # The renewal sweep: open subscriptions whose period has ended.
            models.Index(
                fields=["period_end"],
                condition=Q(ended_at__isnull=True),
                name="plan_subscription_renewals",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.lab} on {self.plan}"

    @property
    def is_last_period(self) -> bool:
        """The current period is the plan's last (a trial, a fixed term): it ends, not renews."""
        periods = self.plan.periods
        return periods is not None and self.period_index + 1 >= periods

    @property
    def term_over(self) -> bool:
        """The last period of its term is over, though the renewal has not yet closed it."""
        return self.is_last_period and self.period_end <= timezone.now()
