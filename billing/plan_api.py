"""Plans over the API, for platforms that decide their users' plans (an upgrade, a trial):
`GET /api/v1/plans`, and `GET|PUT|DELETE /api/v1/labs/{lab_id}/plan`.

Operator tokens only (no lab, the `plans` scope): a lab's own token must not choose its lab's
plan, since a plan grants credits. Errors have the shape of the rest of /api/v1.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.authentication import ServiceTokenAuthentication
from accounts.models import Lab, Scope, ServiceToken
from accounts.permissions import token_scope_required
from billing import plans, selectors
from billing.errors import PlanError
from billing.models import Plan, PlanSubscription
from core.accounting import StrictSerializer, UUIDField
from core.errors import NotFoundError
from core.parsers import UnicodeJSONParser

PlansScope = token_scope_required(Scope.PLANS)


class OperatorToken(BasePermission):
    message = "Plans are managed by operator tokens (no lab) only."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, ServiceToken) and request.auth.lab_id is None


class PlanNotFoundError(NotFoundError):
    default_message = "Plan not found"


class PlanOut(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    credits = serializers.DecimalField(
        max_digits=24, decimal_places=6, help_text="Credits granted every period."
    )
    period = serializers.CharField(help_text="monthly, weekly or daily, from when a lab joins.")
    rollover = serializers.CharField(help_text="reset, or carry (up to rollover_max).")
    rollover_max = serializers.DecimalField(max_digits=24, decimal_places=6, allow_null=True)
    periods = serializers.IntegerField(
        allow_null=True,
        help_text="A trial or a fixed term: the plan ends after this many periods; null: it "
        "renews until ended.",
    )
    category = serializers.CharField()
    is_default = serializers.BooleanField(help_text="New users' personal labs start on it.")
    active = serializers.BooleanField(help_text="False: no new subscriptions.")


class LabPlanOut(serializers.Serializer):
    lab = UUIDField()
    plan = PlanOut()
    project = UUIDField(help_text="Receives the plan's credits.")
    started_at = serializers.DateTimeField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField(help_text="When the plan renews, or ends.")
    renews = serializers.BooleanField(
        help_text="False: this is the plan's last period (or the plan has ended); at "
        "period_end the lab is on no plan."
    )
    period_credits = serializers.DecimalField(
        max_digits=24, decimal_places=6, help_text="This period's grant."
    )
    period_credits_left = serializers.DecimalField(
        max_digits=24,
        decimal_places=6,
        help_text="Of which still in the lab or its projects, not held by running work.",
    )
    ended_at = serializers.DateTimeField(allow_null=True)


class LabPlanIn(StrictSerializer):
    """The plan, by its slug, and the project that receives its credits (unknown fields are
    refused)."""

    plan = serializers.SlugField(max_length=64)
    project = UUIDField(
        required=False, allow_null=True, help_text="Empty: the lab's Default project."
    )


def _plan(plan: Plan) -> dict[str, Any]:
    return {
        "slug": plan.slug,
        "name": plan.name,
        "description": plan.description,
        "credits": plan.credits,
        "period": plan.period,
        "rollover": plan.rollover,
        "rollover_max": plan.rollover_max,
        "periods": plan.periods,
        "category": plan.category,
        "is_default": plan.is_default,
        "active": plan.active,
    }


def _lab_plan(lab: Lab, subscription: PlanSubscription) -> dict[str, Any]:
    state = selectors.plan_state(subscription)
    return {
        "lab": str(lab.uuid),
        "plan": _plan(subscription.plan),
        "project": str(subscription.project.uuid),
        "started_at": subscription.started_at,
        "period_start": subscription.period_start,
        "period_end": subscription.period_end,
        "renews": subscription.ended_at is None and not subscription.is_last_period,
        "period_credits": state.granted,
        "period_credits_left": state.left,
        "ended_at": subscription.ended_at,
    }


_ERRORS = {
    400: OpenApiResponse(description="INVALID_REQUEST: bad body, inactive plan, foreign project"),
    401: OpenApiResponse(description="No or an invalid service token"),
    403: OpenApiResponse(description="Not an operator token with the `plans` scope"),
    404: OpenApiResponse(
        description="ENTITY_NOT_FOUND: no such lab or plan, or (GET, DELETE) the lab is on no plan"
    ),
}


_READ_ERRORS = {status: response for status, response in _ERRORS.items() if status != 400}


def _lab_on_a_plan(request: Request, lab_id: str) -> tuple[Lab, PlanSubscription]:
    """The lab (404 if the token cannot see it) and the plan it is on (404 if none)."""
    lab = account_selectors.lab_get(actor=request.auth, lab_uuid=lab_id)
    subscription = selectors.plan_subscription_current(lab_id=lab.pk)
    if subscription is None:
        raise NotFoundError("The lab is on no plan")
    return lab, subscription


class PlanListView(APIView):
    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [PlansScope, OperatorToken]

    @extend_schema(
        operation_id="plans_list",
        summary="Every plan, active or not",
        responses={200: PlanOut(many=True), 401: _ERRORS[401], 403: _ERRORS[403]},
        tags=["plans"],
    )
    def get(self, request: Request) -> Response:
        plans_out = [_plan(plan) for plan in Plan.objects.order_by("name", "id")]
        return Response(PlanOut(plans_out, many=True).data)


class LabPlanView(APIView):
    """The plan a lab is on: read it, put the lab on a plan, or end it."""

    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [PlansScope, OperatorToken]
    parser_classes = [UnicodeJSONParser]

    @extend_schema(
        operation_id="lab_plan_retrieve",
        summary="The plan a lab is on, with this period's credits",
        responses={200: LabPlanOut, **_READ_ERRORS},
        tags=["plans"],
    )
    def get(self, request: Request, lab_id: str) -> Response:
        lab, subscription = _lab_on_a_plan(request, lab_id)
        return Response(LabPlanOut(_lab_plan(lab, subscription)).data)

    @extend_schema(
        operation_id="lab_plan_set",
        summary="Put a lab on a plan from now (the same plan again: nothing changes)",
        request=LabPlanIn,
        responses={200: LabPlanOut, **_ERRORS},
        tags=["plans"],
    )
    def put(self, request: Request, lab_id: str) -> Response:
        lab = account_selectors.lab_get(actor=request.auth, lab_uuid=lab_id)
        body = LabPlanIn(data=request.data)
        body.is_valid(raise_exception=True)
        plan = Plan.objects.filter(slug=body.validated_data["plan"]).first()
        if plan is None:
            raise PlanNotFoundError()
        project_uuid = body.validated_data.get("project")
        project = None
        if project_uuid is not None:
            project = lab.projects.filter(uuid=project_uuid).first()
            if project is None:
                raise PlanError("The project must belong to the lab")
        subscription = plans.plan_subscribe(lab=lab, plan=plan, project=project, actor=request.auth)
        return Response(LabPlanOut(_lab_plan(lab, subscription)).data)

    @extend_schema(
        operation_id="lab_plan_end",
        summary="End a lab's plan: no more renewals; this period's credits stay until it ends",
        responses={200: LabPlanOut, **_READ_ERRORS},
        tags=["plans"],
    )
    def delete(self, request: Request, lab_id: str) -> Response:
        lab, subscription = _lab_on_a_plan(request, lab_id)
        ended = plans.plan_end(subscription=subscription, actor=request.auth)
        return Response(LabPlanOut(_lab_plan(lab, ended)).data)
