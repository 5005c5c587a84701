"""Reads of labs and projects, always through the acting principal: a person or a token."""

from __future__ import annotations

import uuid as uuid_lib

from django.db.models import QuerySet

from accounts.errors import LabNotFoundError, ProjectNotFoundError
from accounts.models import Lab, Membership, Project, Role, ServiceToken, User
from core.db import Columns, execute_prepared

Actor = User | ServiceToken


def lab_list(*, actor: Actor) -> QuerySet[Lab]:
    labs = Lab.objects.all()
    if isinstance(actor, ServiceToken):
        return labs if actor.lab_id is None else labs.filter(pk=actor.lab_id)
    if actor.is_authenticated and actor.is_active:
        return labs.filter(memberships__user=actor)
    return labs.none()


def _as_uuid(value: uuid_lib.UUID | str) -> uuid_lib.UUID | None:
    try:
        return value if isinstance(value, uuid_lib.UUID) else uuid_lib.UUID(str(value))
    except ValueError:
        return None


def lab_get(*, actor: Actor, lab_uuid: uuid_lib.UUID | str) -> Lab:
    key = _as_uuid(lab_uuid)
    lab = lab_list(actor=actor).filter(uuid=key).first() if key else None
    if lab is None:
        raise LabNotFoundError()
    return lab


def project_list(*, actor: Actor, lab: Lab | None = None) -> QuerySet[Project]:
    projects = Project.objects.select_related("lab").filter(lab__in=lab_list(actor=actor))
    return projects if lab is None else projects.filter(lab=lab)


_PROJECT = Columns(Project, "p")
_LAB = Columns(Lab, "l")
# A service token's project, with its lab: every accounting call of a service reads it.
_TOKEN_PROJECT = f"""
SELECT {_PROJECT.sql}, {_LAB.sql}
  FROM accounts_project p JOIN accounts_lab l ON l.id = p.lab_id
 WHERE p.uuid = %(uuid)s AND (%(lab)s::bigint IS NULL OR p.lab_id = %(lab)s::bigint)
"""  # noqa: S608


def project_get(*, actor: Actor, project_uuid: uuid_lib.UUID | str) -> Project:
    key = _as_uuid(project_uuid)
    if key is not None and isinstance(actor, ServiceToken):
        project = _token_project(actor, key)
    else:
        project = project_list(actor=actor).filter(uuid=key).first() if key else None
    if project is None:
        raise ProjectNotFoundError()
    return project


def _token_project(token: ServiceToken, key: uuid_lib.UUID) -> Project | None:
    """project_list(actor=token)'s project, as one prepared statement."""
    rows = execute_prepared(_TOKEN_PROJECT, {"uuid": key, "lab": token.lab_id})
    if not rows:
        return None
    project = _PROJECT.load(rows[0])
    project.lab = _LAB.load(rows[0], len(_PROJECT))
    return project


def membership_role(*, user: User, lab: Lab) -> str | None:
    return Membership.objects.filter(user=user, lab=lab).values_list("role", flat=True).first()


def lab_role_can_manage(role: str | None) -> bool:
    return role in (Role.OWNER, Role.ADMIN)


def lab_members(*, actor: Actor, lab: Lab) -> QuerySet[Membership]:
    """Members of a lab the actor can see; an outsider gets nothing (lab_get raises first)."""
    visible = lab_get(actor=actor, lab_uuid=lab.uuid)
    return Membership.objects.select_related("user").filter(lab=visible).order_by("role", "id")
