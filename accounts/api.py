"""JSON API for labs and projects (/api/v1/). People see their labs; tokens see their scope."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import selectors
from accounts.models import Lab, Scope, ServiceToken, User
from accounts.permissions import token_scope_required
from core.accounting import UUIDField


class ProjectOut(serializers.Serializer):
    id = UUIDField(source="uuid")
    name = serializers.CharField()
    lab_id = UUIDField(source="lab.uuid")
    created_at = serializers.DateTimeField()


class LabOut(serializers.Serializer):
    id = UUIDField(source="uuid")
    name = serializers.CharField()
    is_personal = serializers.SerializerMethodField()
    role = serializers.SerializerMethodField()
    projects = ProjectOut(many=True, source="projects.all")
    created_at = serializers.DateTimeField()

    def get_is_personal(self, lab: Lab) -> bool:
        return lab.personal_for_id is not None

    def get_role(self, lab: Lab) -> str | None:
        actor = self.context["actor"]
        return selectors.membership_role(user=actor, lab=lab) if isinstance(actor, User) else None


LabsRead = token_scope_required(Scope.LABS, people_allowed=True)


@extend_schema(responses=LabOut(many=True), tags=["labs"])
@api_view(["GET"])
@permission_classes([LabsRead])
def lab_list(request: Request) -> Response:
    labs = selectors.lab_list(actor=_actor(request)).prefetch_related("projects__lab")
    return Response(LabOut(labs, many=True, context={"actor": _actor(request)}).data)


@extend_schema(responses=LabOut, tags=["labs"])
@api_view(["GET"])
@permission_classes([LabsRead])
def lab_detail(request: Request, lab_id: str) -> Response:
    lab = selectors.lab_get(actor=_actor(request), lab_uuid=lab_id)
    return Response(LabOut(lab, context={"actor": _actor(request)}).data)


@extend_schema(responses=ProjectOut, tags=["labs"])
@api_view(["GET"])
@permission_classes([LabsRead])
def project_detail(request: Request, project_id: str) -> Response:
    project = selectors.project_get(actor=_actor(request), project_uuid=project_id)
    return Response(ProjectOut(project).data)


def _actor(request: Request) -> User | ServiceToken:
    return request.user  # type: ignore[return-value]
