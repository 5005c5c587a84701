"""Accounting-service routes for accounts, balances and budgets (/api/accounting/...).

Global service tokens act on every lab; a lab-bound token sees and moves only its own lab's
budget and cannot create money (top-up, grant) or destroy it (deplete)."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import selectors as account_selectors
from accounts.authentication import ServiceTokenAuthentication
from accounts.errors import LabNotFoundError, ProjectNotFoundError
from accounts.models import Lab, Project, Scope, ServiceToken
from accounts.permissions import token_scope_required
from accounts.services import lab_create, project_create
from billing import selectors, services
from billing.errors import AccountNotFoundError, SystemAccountNotFoundError
from billing.models import GrantSource, LedgerAccount
from core.accounting import (
    AccountingView,
    CreditsField,
    StrictSerializer,
    UUIDField,
    envelope,
    enveloped,
)
from core.errors import ConflictError
from core.money import credits_format_cents


class GlobalTokenRequired(BasePermission):
    message = "This operation needs a global service token, not one bound to a lab."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, ServiceToken) and request.auth.lab_id is None


class AccountingTokenView(AccountingView):
    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [token_scope_required(Scope.ACCOUNTING)]

    @property
    def token(self) -> ServiceToken:
        return self.request.auth  # type: ignore[return-value]

    def lab(self, lab_id: Any, *, message: str = "Virtual lab not found") -> Lab:
        try:
            return account_selectors.lab_get(actor=self.token, lab_uuid=lab_id)
        except LabNotFoundError as exc:
            raise LabNotFoundError(message) from exc

    def project(self, project_id: Any, *, message: str = "Project not found") -> Project:
        try:
            return account_selectors.project_get(actor=self.token, project_uuid=project_id)
        except ProjectNotFoundError as exc:
            raise AccountNotFoundError(message) from exc

    def valid(self, serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class GlobalTokenView(AccountingTokenView):
    permission_classes = [token_scope_required(Scope.ACCOUNTING), GlobalTokenRequired]


# Accounts ------------------------------------------------------------------------------------


class AccountOut(serializers.Serializer):
    id = UUIDField()
    name = serializers.CharField()


class LabAccountOut(AccountOut):
    balance = serializers.CharField()


class ProjectBalanceOut(serializers.Serializer):
    proj_id = UUIDField()
    balance = serializers.CharField()
    reservation = serializers.CharField()


class LabBalanceOut(serializers.Serializer):
    vlab_id = UUIDField()
    balance = serializers.CharField()
    projects = ProjectBalanceOut(many=True, required=False)


class SystemBalanceOut(serializers.Serializer):
    balance = serializers.CharField()


class DepleteOut(serializers.Serializer):
    total_amount = serializers.CharField()


NULL_DATA = enveloped("AccountingOperationOut")


class SystemAccountIn(StrictSerializer):
    id = UUIDField()
    name = serializers.CharField(max_length=200)


class SystemAccountView(GlobalTokenView):
    @extend_schema(
        request=SystemAccountIn,
        responses={201: enveloped("SystemAccountOut", AccountOut())},
        tags=["accounting: accounts"],
    )
    def post(self, request: Request) -> Response:
        data = self.valid(SystemAccountIn)
        with transaction.atomic():
            system = services.system_account_get_or_create()
            system = LedgerAccount.objects.select_for_update().get(pk=system.pk)
            if system.uuid != LedgerAccount.UNCLAIMED_SYSTEM_UUID:
                raise ConflictError("System account already exists")
            system.uuid, system.name = data["id"], data["name"]
            system.save(update_fields=["uuid", "name", "updated_at"])
        return envelope(
            "System account created",
            {"id": str(system.uuid), "name": system.name},
            status.HTTP_201_CREATED,
        )


class VirtualLabIn(StrictSerializer):
    id = UUIDField()
    name = serializers.CharField(max_length=200)
    balance = CreditsField(positive=False, required=False)


class VirtualLabAccountView(GlobalTokenView):
    @extend_schema(
        request=VirtualLabIn,
        responses={201: enveloped("VirtualLabAccountOut", LabAccountOut())},
        tags=["accounting: accounts"],
    )
    def post(self, request: Request) -> Response:
        data = self.valid(VirtualLabIn)
        balance = data.get("balance")
        try:
            with transaction.atomic():
                lab = lab_create(name=data["name"], lab_uuid=data["id"])
                if balance:
                    services.lab_top_up(
                        lab=lab, amount=balance, source=GrantSource.API, actor=self.token
                    )
        except IntegrityError as exc:
            raise ConflictError("Virtual lab already exists") from exc
        return envelope(
            "Virtual lab created",
            {
                "id": str(lab.uuid),
                "name": lab.name,
                "balance": str(balance if balance is not None else 0),
            },
            status.HTTP_201_CREATED,
        )


class ProjectIn(StrictSerializer):
    id = UUIDField()
    name = serializers.CharField(max_length=200)
    vlab_id = UUIDField()


class ProjectAccountView(AccountingTokenView):
    @extend_schema(
        request=ProjectIn,
        responses={201: enveloped("ProjectAccountOut", AccountOut())},
        tags=["accounting: accounts"],
    )
    def post(self, request: Request) -> Response:
        data = self.valid(ProjectIn)
        lab = self.lab(data["vlab_id"])
        try:
            with transaction.atomic():
                project = project_create(lab=lab, name=data["name"], project_uuid=data["id"])
        except IntegrityError as exc:
            raise ConflictError("Project already exists") from exc
        return envelope(
            "Project created",
            {"id": str(project.uuid), "name": project.name},
            status.HTTP_201_CREATED,
        )


# Balances ------------------------------------------------------------------------------------


def _project_balance_out(balance: selectors.ProjectBalance) -> dict[str, str]:
    return {
        "proj_id": str(balance.project.uuid),
        # What can be spent now, so a 402/400 always means "more than this balance".
        "balance": credits_format_cents(balance.spendable),
        "reservation": credits_format_cents(balance.reserved),
    }


class SystemBalanceView(GlobalTokenView):
    @extend_schema(
        responses=enveloped("SystemBalanceEnvelope", SystemBalanceOut()),
        tags=["accounting: balance"],
    )
    def get(self, request: Request) -> Response:
        balance = selectors.system_balance_get()
        if balance is None:
            raise SystemAccountNotFoundError()
        return envelope("Balance for system", {"balance": credits_format_cents(balance)})


# The boolean spellings the reference's query parsing (pydantic) accepts.
TRUE_WORDS = {"true", "1", "yes", "on", "t", "y"}
FALSE_WORDS = {"false", "0", "no", "off", "f", "n"}


class LabBalanceView(AccountingTokenView):
    @extend_schema(
        parameters=[OpenApiParameter("include_projects", bool, default=False)],
        responses=enveloped("LabBalanceEnvelope", LabBalanceOut()),
        tags=["accounting: balance"],
    )
    def get(self, request: Request, vlab_id: str) -> Response:
        include = request.query_params.get("include_projects", "false").lower()
        if include not in TRUE_WORDS | FALSE_WORDS:
            raise serializers.ValidationError(
                {"include_projects": ["Input should be a valid boolean"]}
            )
        state = selectors.lab_balance(self.lab(self.path_uuid(vlab_id, "vlab_id")))
        data: dict[str, Any] = {
            "vlab_id": str(state.lab.uuid),
            "balance": credits_format_cents(state.spendable),
        }
        message = "Balance for virtual-lab"
        if include in TRUE_WORDS:
            data["projects"] = [_project_balance_out(p) for p in state.projects]
            message += " including projects"
        return envelope(message, data)


class ProjectBalanceView(AccountingTokenView):
    @extend_schema(
        responses=enveloped("ProjectBalanceEnvelope", ProjectBalanceOut()),
        tags=["accounting: balance"],
    )
    def get(self, request: Request, proj_id: str) -> Response:
        project = self.project(self.path_uuid(proj_id, "proj_id"))
        return envelope(
            "Balance for project", _project_balance_out(selectors.project_balances([project])[0])
        )


# Budget operations ---------------------------------------------------------------------------


class TopUpIn(StrictSerializer):
    vlab_id = UUIDField()
    amount = CreditsField()


class TopUpView(GlobalTokenView):
    @extend_schema(request=TopUpIn, responses=NULL_DATA, tags=["accounting: budget"])
    def post(self, request: Request) -> Response:
        data = self.valid(TopUpIn)
        services.lab_top_up(
            lab=self.lab(data["vlab_id"]),
            amount=data["amount"],
            source=GrantSource.API,
            actor=self.token,
            idempotency_key=self.idempotency_key(),
        )
        return envelope("Top-up operation executed")


class AssignIn(StrictSerializer):
    vlab_id = UUIDField()
    proj_id = UUIDField()
    amount = CreditsField()


class AssignView(AccountingTokenView):
    @extend_schema(request=AssignIn, responses=NULL_DATA, tags=["accounting: budget"])
    def post(self, request: Request) -> Response:
        data = self.valid(AssignIn)
        services.budget_assign(
            lab=self.lab(data["vlab_id"]),
            project=self.project(data["proj_id"], message="Account not found"),
            amount=data["amount"],
            actor=self.token,
            idempotency_key=self.idempotency_key(),
        )
        return envelope("Assign budget operation executed")


class ReverseView(AccountingTokenView):
    @extend_schema(request=AssignIn, responses=NULL_DATA, tags=["accounting: budget"])
    def post(self, request: Request) -> Response:
        data = self.valid(AssignIn)
        services.budget_reverse(
            lab=self.lab(data["vlab_id"]),
            project=self.project(data["proj_id"], message="Account not found"),
            amount=data["amount"],
            actor=self.token,
            idempotency_key=self.idempotency_key(),
        )
        return envelope("Reverse budget operation executed")


class MoveIn(StrictSerializer):
    vlab_id = UUIDField()
    debited_from = UUIDField()
    credited_to = UUIDField()
    amount = CreditsField()


class MoveView(AccountingTokenView):
    @extend_schema(request=MoveIn, responses=NULL_DATA, tags=["accounting: budget"])
    def post(self, request: Request) -> Response:
        data = self.valid(MoveIn)
        services.budget_move(
            lab=self.lab(data["vlab_id"]),
            debited=self.project(data["debited_from"], message="Account not found"),
            credited=self.project(data["credited_to"], message="Account not found"),
            amount=data["amount"],
            actor=self.token,
            idempotency_key=self.idempotency_key(),
        )
        return envelope("Move budget operation executed")


class GrantIn(StrictSerializer):
    proj_id = UUIDField()
    amount = CreditsField()


class GrantView(GlobalTokenView):
    @extend_schema(request=GrantIn, responses=NULL_DATA, tags=["accounting: budget"])
    def post(self, request: Request) -> Response:
        data = self.valid(GrantIn)
        services.budget_grant(
            project=self.project(data["proj_id"], message="Account not found"),
            amount=data["amount"],
            actor=self.token,
            idempotency_key=self.idempotency_key(),
        )
        return envelope("Grant budget operation executed")


class DepleteProjectIn(StrictSerializer):
    proj_id = UUIDField()


class DepleteProjectView(GlobalTokenView):
    @extend_schema(
        request=DepleteProjectIn,
        responses=enveloped("DepleteProjectOut", DepleteOut()),
        tags=["accounting: budget"],
    )
    def post(self, request: Request) -> Response:
        data = self.valid(DepleteProjectIn)
        total = services.project_deplete(project=self.project(data["proj_id"]), actor=self.token)
        return envelope(
            "Deplete project operation executed", {"total_amount": credits_format_cents(total)}
        )


class DepleteLabIn(StrictSerializer):
    vlab_id = UUIDField()


class DepleteLabView(GlobalTokenView):
    @extend_schema(
        request=DepleteLabIn,
        responses=enveloped("DepleteLabOut", DepleteOut()),
        tags=["accounting: budget"],
    )
    def post(self, request: Request) -> Response:
        data = self.valid(DepleteLabIn)
        total = services.lab_deplete(lab=self.lab(data["vlab_id"]), actor=self.token)
        return envelope(
            "Deplete virtual lab operation executed", {"total_amount": credits_format_cents(total)}
        )
