"""Writes for users, labs, projects, memberships and service tokens. Each is one transaction."""

from __future__ import annotations

import uuid as uuid_lib
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from accounts.errors import InvalidScopeError, MembershipError
from accounts.models import Lab, Membership, Project, Role, Scope, ServiceToken, User
from core.secrets import lookup_id_generate, secret_generate, secret_hash

DEFAULT_PROJECT_NAME = "Default"


@transaction.atomic
def lab_create(
    *, name: str, owner: User | None = None, lab_uuid: uuid_lib.UUID | None = None
) -> Lab:
    lab = Lab.objects.create(name=name, **({"uuid": lab_uuid} if lab_uuid else {}))
    if owner is not None:
        Membership.objects.create(lab=lab, user=owner, role=Role.OWNER)
    return lab


@transaction.atomic
def project_create(*, lab: Lab, name: str, project_uuid: uuid_lib.UUID | None = None) -> Project:
    return Project.objects.create(
        lab=lab, name=name, **({"uuid": project_uuid} if project_uuid else {})
    )


@transaction.atomic
def membership_add(*, lab: Lab, user: User, role: str = Role.MEMBER) -> Membership:
    membership, _ = Membership.objects.update_or_create(lab=lab, user=user, defaults={"role": role})
    return membership


def _membership_locked(lab: Lab, user: User) -> Membership:
    """The membership, with every owner row of the lab locked: two changes racing to remove
    the last two owners serialise, and the second sees one owner left."""
    list(Membership.objects.select_for_update().filter(lab=lab, role=Role.OWNER))
    membership = Membership.objects.select_for_update().filter(lab=lab, user=user).first()
    if membership is None:
        raise MembershipError(f"{user.email} is not a member of {lab.name}.")
    return membership


def _owner_change_allowed(lab: Lab, membership: Membership, by_role: str | None) -> None:
    if membership.role == Role.OWNER and by_role != Role.OWNER:
        raise MembershipError("Only an owner changes or removes another owner.")
    others = Membership.objects.filter(lab=lab, role=Role.OWNER).exclude(pk=membership.pk)
    if membership.role == Role.OWNER and not others.exists():
        raise MembershipError(f"{lab.name} needs an owner: make someone else owner first.")


@transaction.atomic
def membership_role_set(*, lab: Lab, user: User, role: str, by_role: str | None) -> Membership:
    """Change a member's role, as someone of role `by_role` in the lab (an owner or admin:
    the caller checks). Only owners make or unmake owners; the last owner stays one."""
    if role not in Role.values:
        raise MembershipError(f"Unknown role: {role}.")
    membership = _membership_locked(lab, user)
    if role == Role.OWNER and by_role != Role.OWNER:
        raise MembershipError("Only an owner makes someone an owner.")
    if membership.role != role:
        _owner_change_allowed(lab, membership, by_role)
        membership.role = role
        membership.save(update_fields=["role", "updated_at"])
    return membership


@transaction.atomic
def membership_remove(*, lab: Lab, user: User, by_role: str | None) -> None:
    """Remove a member (their keys stay with the lab's projects; an owner or admin revokes
    them). Only owners remove owners; the last owner stays."""
    membership = _membership_locked(lab, user)
    _owner_change_allowed(lab, membership, by_role)
    membership.delete()


@transaction.atomic
def personal_lab_create(*, user: User) -> Lab:
    """Every user's own lab, with a "Default" project. Safe to call twice."""
    existing = Lab.objects.filter(personal_for=user).first()
    if existing is not None:
        return existing
    label = user.name or user.email.split("@")[0]
    lab = lab_create(name=f"{label}'s lab", owner=user)
    lab.personal_for = user
    lab.save(update_fields=["personal_for", "updated_at"])
    project_create(lab=lab, name=DEFAULT_PROJECT_NAME)
    return lab


@transaction.atomic
def user_create(
    *,
    email: str,
    password: str | None,
    name: str = "",
    is_staff: bool = False,
    is_superuser: bool = False,
) -> User:
    """A user with a personal lab; signup goes through allauth, which calls personal_lab_create."""
    if is_superuser:
        user = User.objects.create_superuser(email=email, password=password, name=name)
    else:
        user = User.objects.create_user(
            email=email, password=password, name=name, is_staff=is_staff
        )
    personal_lab_create(user=user)
    return user


def scopes_validate(scopes: Iterable[str]) -> list[str]:
    cleaned = sorted({s.strip() for s in scopes if s.strip()})
    unknown = [s for s in cleaned if s not in Scope.values]
    if unknown:
        raise InvalidScopeError(
            f"Unknown scope(s): {', '.join(unknown)}. Known: {', '.join(Scope.values)}.",
            details={"unknown": unknown, "known": list(Scope.values)},
        )
    if not cleaned:
        raise InvalidScopeError("A service token needs at least one scope.")
    return cleaned


@transaction.atomic
def service_token_create(
    *,
    name: str,
    scopes: Iterable[str],
    lab: Lab | None = None,
    created_by: User | None = None,
) -> tuple[ServiceToken, str]:
    """Returns the token row and the plain token, which is never stored and shown once."""
    secret = secret_generate()
    token = ServiceToken.objects.create(
        name=name,
        scopes=scopes_validate(scopes),
        lab=lab,
        created_by=created_by,
        lookup_id=lookup_id_generate(),
        secret_hash=secret_hash(secret),
    )
    return token, f"{ServiceToken.PREFIX}{token.lookup_id}_{secret}"


def service_token_revoke(*, token: ServiceToken) -> ServiceToken:
    """Revoking twice keeps the first revocation time."""
    ServiceToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db(fields=["revoked_at"])
    return token
