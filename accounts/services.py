"""Writes for users, labs, projects, memberships and service tokens. Each is one transaction."""

from __future__ import annotations

import logging
import uuid as uuid_lib
from collections.abc import Iterable

from allauth.account.models import EmailAddress
from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.errors import (
    InvalidScopeError,
    InvitationNotFoundError,
    InvitationStaleError,
    MembershipError,
)
from accounts.models import (
    OPERATOR_ONLY_SCOPES,
    Lab,
    LabInvitation,
    Membership,
    Project,
    Role,
    Scope,
    ServiceToken,
    User,
)
from accounts.signals import membership_removed, personal_lab_created
from core.mail import people_mail
from core.secrets import lookup_id_generate, secret_generate, secret_hash

DEFAULT_PROJECT_NAME = "Default"
logger = logging.getLogger(__name__)


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


def _owners_locked(lab: Lab) -> None:
    """Lock the lab's owner rows first, in every membership change: two changes racing to
    remove the last two owners serialise, and the second sees one owner left."""
    list(Membership.objects.select_for_update().filter(lab=lab, role=Role.OWNER))


def _role_now(lab: Lab, user: User) -> str | None:
    """The user's role read after the owner rows are locked (an owner demoted meanwhile is
    not one any more)."""
    return Membership.objects.filter(lab=lab, user=user).values_list("role", flat=True).first()


def _membership_locked(lab: Lab, user: User) -> Membership:
    membership = Membership.objects.select_for_update().filter(lab=lab, user=user).first()
    if membership is None:
        raise MembershipError(f"{user.email} is not a member of {lab.name}.")
    return membership


def _change_allowed(lab: Lab, membership: Membership, by: User, by_role: str | None) -> None:
    leaving = membership.user_id == by.pk
    if not leaving and by_role not in (Role.OWNER, Role.ADMIN):
        raise MembershipError("Only the lab's owners and admins change its members.")
    if lab.personal_for_id == membership.user_id:
        own = membership.user.email
        raise MembershipError(f"{lab.name} is {own}'s own lab: they stay its owner.")
    if membership.role == Role.OWNER and not leaving and by_role != Role.OWNER:
        raise MembershipError("Only an owner changes or removes another owner.")
    others = Membership.objects.filter(lab=lab, role=Role.OWNER).exclude(pk=membership.pk)
    if membership.role == Role.OWNER and not others.exists():
        raise MembershipError(f"{lab.name} needs an owner: make someone else owner first.")


@transaction.atomic
def membership_role_set(*, lab: Lab, user: User, role: str, by: User) -> Membership:
    """Change a member's role, by an owner or admin of the lab. Only owners make or unmake
    owners; the last owner, and a personal lab's own user, stay owners."""
    if role not in Role.values:
        raise MembershipError(f"Unknown role: {role}.")
    _owners_locked(lab)
    by_role = _role_now(lab, by)
    membership = _membership_locked(lab, user)
    if role == Role.OWNER and by_role != Role.OWNER:
        raise MembershipError("Only an owner makes someone an owner.")
    if membership.role != role:
        if membership.user_id == by.pk and by_role not in (Role.OWNER, Role.ADMIN):
            raise MembershipError("Only the lab's owners and admins change its members.")
        _change_allowed(lab, membership, by, by_role)
        membership.role = role
        membership.save(update_fields=["role", "updated_at"])
    return membership


@transaction.atomic
def membership_remove(*, lab: Lab, user: User, by: User) -> int:
    """Remove a member, by an owner or admin of the lab, or the member leaving. Only owners
    remove owners; the last owner, and a personal lab's own user, stay. Returns how many API
    keys were revoked with it (membership_removed_announce)."""
    _owners_locked(lab)
    by_role = _role_now(lab, by)
    membership = _membership_locked(lab, user)
    _change_allowed(lab, membership, by, by_role)
    membership.delete()
    # Open invitations to the member's addresses would let them straight back in.
    addresses = EmailAddress.objects.filter(user=user).values_list("email", flat=True)
    LabInvitation.objects.filter(
        lab=lab,
        email__in=[address.lower() for address in [user.email, *addresses]],
        accepted_at__isnull=True,
        closed_at__isnull=True,
    ).update(closed_at=timezone.now(), updated_at=timezone.now())
    return membership_removed_announce(lab=lab, user=user, by=by)


def membership_removed_announce(*, lab: Lab, user: User, by: User | None) -> int:
    """Tell the other apps a member is gone (in the removal's transaction): the keys they made
    in the lab's projects are revoked with it. Returns how many."""
    answers = membership_removed.send(sender=Membership, lab=lab, user=user, by=by)
    return sum(answer for _, answer in answers if isinstance(answer, int))


# Invitations ------------------------------------------------------------------------------------


@transaction.atomic
def invitation_create(*, lab: Lab, email: str, role: str, by: User) -> LabInvitation:
    """Invite an email address (with or without an account) into the lab; they join when they
    accept. A second invitation of the same address replaces the open one's role. The same
    answer whether or not the address has an account: nothing tells who has one."""
    email = email.strip().lower()
    _owners_locked(lab)
    by_role = _role_now(lab, by)
    if by_role not in (Role.OWNER, Role.ADMIN):
        raise MembershipError("Only the lab's owners and admins invite members.")
    if role == Role.OWNER and by_role != Role.OWNER:
        raise MembershipError("Only an owner makes someone an owner.")
    members = Membership.objects.filter(lab=lab)
    if members.filter(
        Q(user__email__iexact=email)
        | Q(user__emailaddress__email__iexact=email, user__emailaddress__verified=True)
    ).exists():
        raise MembershipError(f"{email} is already a member of {lab.name}.")
    invitation = (
        LabInvitation.objects.select_for_update()
        .filter(lab=lab, email=email, accepted_at__isnull=True, closed_at__isnull=True)
        .first()
    )
    if invitation is not None and invitation.role == role:
        return invitation  # the same invitation again: no second mail
    if invitation is None:
        invitation = LabInvitation(lab=lab, email=email)
    invitation.role, invitation.invited_by = role, by
    invitation.save()
    transaction.on_commit(lambda: _invitation_mail(invitation))
    return invitation


def _invitation_mail(invitation: LabInvitation) -> None:
    inviter = invitation.invited_by.email if invitation.invited_by else "An administrator"
    body = (
        f"{inviter} invited you to the lab {invitation.lab.name} on Meterbill, as "
        f"{Role(invitation.role).label.lower()}.\n\nSign in (or sign up) with this address to "
        f"accept or decline: {settings.PORTAL_BASE_URL}/app/\n"
    )
    lab_name = " ".join(invitation.lab.name.split())  # one line, whatever the name holds
    try:
        people_mail(f"Invitation to {lab_name}", body, [invitation.email])
    except Exception:  # the invitation stands; the dashboard shows it
        logger.exception("invitation mail to %s failed", invitation.email)


def invitations_open_for(user: User) -> QuerySet[LabInvitation]:
    """Open invitations to the user's verified addresses."""
    emails = [
        address.lower()
        for address in EmailAddress.objects.filter(user=user, verified=True).values_list(
            "email", flat=True
        )
    ]
    return LabInvitation.objects.filter(
        email__in=emails, accepted_at__isnull=True, closed_at__isnull=True
    ).select_related("lab", "invited_by")


def _open_invitation_locked(invitation_uuid: uuid_lib.UUID, user: User) -> LabInvitation:
    invitation = (
        invitations_open_for(user)
        .select_for_update(of=("self",))
        .filter(uuid=invitation_uuid)
        .first()
    )
    if invitation is None:
        raise InvitationNotFoundError()
    return invitation


def invitation_accept(*, invitation_uuid: uuid_lib.UUID, user: User) -> tuple[Membership, bool]:
    """Join the lab with the invitation's role; returns the membership and whether it is new
    (an existing member keeps their role). The inviter must still be allowed to grant that
    role now: an invitation of an owner demoted or removed since is closed, and refused."""
    membership, created, lab = _invitation_accepted(invitation_uuid, user)
    if membership is None:
        raise InvitationStaleError(
            f"This invitation to {lab.name} is no longer valid: whoever sent it may no longer "
            "grant that role. Ask the lab's owners for a new one."
        )
    return membership, created


@transaction.atomic
def _invitation_accepted(
    invitation_uuid: uuid_lib.UUID, user: User
) -> tuple[Membership | None, bool, Lab]:
    invitation = _open_invitation_locked(invitation_uuid, user)
    lab, inviter = invitation.lab, invitation.invited_by
    _owners_locked(lab)
    inviter_role = _role_now(lab, inviter) if inviter is not None else None
    may_grant = {Role.OWNER} if invitation.role == Role.OWNER else {Role.OWNER, Role.ADMIN}
    now = timezone.now()
    if inviter_role not in may_grant:
        invitation.closed_at = now
        invitation.save(update_fields=["closed_at", "updated_at"])
        return None, False, lab
    membership, created = Membership.objects.get_or_create(
        lab=lab, user=user, defaults={"role": invitation.role}
    )
    invitation.accepted_at = now
    invitation.save(update_fields=["accepted_at", "updated_at"])
    return membership, created, lab


@transaction.atomic
def invitation_decline(*, invitation_uuid: uuid_lib.UUID, user: User) -> LabInvitation:
    invitation = _open_invitation_locked(invitation_uuid, user)
    invitation.closed_at = timezone.now()
    invitation.save(update_fields=["closed_at", "updated_at"])
    return invitation


@transaction.atomic
def invitation_cancel(*, lab: Lab, invitation_uuid: uuid_lib.UUID, by: User) -> LabInvitation:
    if _role_now(lab, by) not in (Role.OWNER, Role.ADMIN):
        raise MembershipError("Only the lab's owners and admins cancel invitations.")
    invitation = (
        LabInvitation.objects.select_for_update()
        .filter(lab=lab, uuid=invitation_uuid, accepted_at__isnull=True, closed_at__isnull=True)
        .first()
    )
    if invitation is None:
        raise InvitationNotFoundError()
    invitation.closed_at = timezone.now()
    invitation.save(update_fields=["closed_at", "updated_at"])
    return invitation


@transaction.atomic
def personal_lab_create(*, user: User) -> Lab:
    """Every user's own lab, with a "Default" project. Safe to call twice."""
    existing = Lab.objects.filter(personal_for=user).first()
    if existing is not None:
        return existing
    label = user.name or user.email.split("@")[0]
    lab = lab_with_default_project_create(name=f"{label}'s lab", owner=user)
    lab.personal_for = user
    lab.save(update_fields=["personal_for", "updated_at"])
    personal_lab_created.send(
        sender=Lab, lab=lab, project=lab.projects.get(name=DEFAULT_PROJECT_NAME)
    )
    return lab


@transaction.atomic
def lab_with_default_project_create(*, name: str, owner: User) -> Lab:
    """A lab the owner made, with a "Default" project to start spending from."""
    lab = lab_create(name=name, owner=owner)
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
    scopes = scopes_validate(scopes)
    if lab is not None and OPERATOR_ONLY_SCOPES & set(scopes):
        raise InvalidScopeError(
            "The plans scope is for operator tokens (no lab): a lab's own token could grant "
            "its lab credits with it.",
            details={"operator_only": sorted(OPERATOR_ONLY_SCOPES & set(scopes))},
        )
    secret = secret_generate()
    token = ServiceToken.objects.create(
        name=name,
        scopes=scopes,
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
