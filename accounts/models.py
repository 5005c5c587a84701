from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from core.models import TimeStampedModel


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **fields: object) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **fields: object) -> User:
        fields.setdefault("is_staff", False)
        fields.setdefault("is_superuser", False)
        return self._create(email, password, **fields)

    def create_superuser(self, email: str, password: str | None = None, **fields: object) -> User:
        fields["is_staff"] = True
        fields["is_superuser"] = True
        return self._create(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Signs in with an email address; there is no username."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email


class Lab(TimeStampedModel):
    """A virtual lab: the unit that owns credits, members and projects."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    # Set on the one lab every user gets at signup; unique, so a user has one personal lab.
    personal_for = models.OneToOneField(
        User, null=True, blank=True, on_delete=models.PROTECT, related_name="personal_lab"
    )
    members = models.ManyToManyField(User, through="Membership", related_name="labs")

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Project(TimeStampedModel):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    lab = models.ForeignKey(Lab, on_delete=models.PROTECT, related_name="projects")
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.lab.name} / {self.name}"


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


class Membership(TimeStampedModel):
    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        ordering = ["lab_id", "user_id"]
        constraints = [
            models.UniqueConstraint(fields=["lab", "user"], name="membership_unique_lab_user"),
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.lab} ({self.role})"


class LabInvitation(TimeStampedModel):
    """An owner's or admin's invitation of an email address into a lab. Nobody joins a lab
    without accepting: the invitee sees it on their dashboard once they sign in with that
    address verified (whether or not they had an account when invited)."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()  # lower case
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    invited_by = models.ForeignKey(
        User, null=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    accepted_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)  # declined or cancelled

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["lab", "email"],
                condition=models.Q(accepted_at__isnull=True, closed_at__isnull=True),
                name="invitation_one_open_per_lab_email",
            ),
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="invitation_role_valid"
            ),
        ]
        indexes = [
            models.Index(
                fields=["email"],
                condition=models.Q(accepted_at__isnull=True, closed_at__isnull=True),
                name="invitation_open_by_email",
            ),
        ]

    @property
    def is_open(self) -> bool:
        return self.accepted_at is None and self.closed_at is None

    def __str__(self) -> str:
        return f"{self.email} to {self.lab} ({self.role})"


class Scope(models.TextChoices):
    ACCOUNTING = "accounting", "Accounting-service API"
    AUTHORIZE = "authorize", "Authorize end-user API keys"
    USAGE = "usage", "Post usage"
    KEYS = "keys", "Manage end-user API keys"
    LABS = "labs", "Read labs and projects"
    PLANS = "plans", "Put labs on plans (operator tokens only)"


# Scopes a lab's own token may not have: with them it could grant its lab credits.
OPERATOR_ONLY_SCOPES = frozenset({Scope.PLANS})


class ServiceToken(TimeStampedModel):
    """A machine credential for a service or gateway. Only a peppered hash is stored.

    Global tokens (no lab) belong to the operator's own services and may act on every lab;
    lab-bound tokens serve one lab's own automation and see only that lab.
    """

    PREFIX = "st_"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100)
    lookup_id = models.CharField(max_length=32, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    scopes = ArrayField(models.CharField(max_length=32, choices=Scope.choices), default=list)
    lab = models.ForeignKey(
        Lab, null=True, blank=True, on_delete=models.CASCADE, related_name="service_tokens"
    )
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    # DRF treats request.user as the principal; a token is an authenticated, non-human one.
    is_authenticated = True
    is_anonymous = False

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.PREFIX}{self.lookup_id}_…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
