"""The key management API, for platforms that provision keys for their users (the end user's
own view of a key, `GET /api/v1/key`, is keys/self_api.py).

`POST /api/v1/keys`, `GET /api/v1/keys`, `GET|PATCH|DELETE /api/v1/keys/{id}`: a service token
with the `keys` scope. A lab-bound token sees, creates and changes keys in its lab's projects
only; a global (operator) token in every lab's. A key outside the token's reach is a 404, as
if it did not exist. The full key is in the answer of its creation only.

Errors have the shape of the rest of /api/v1: `{"error_code", "message", "details"}`.
"""

from __future__ import annotations

import re
import uuid as uuid_lib
from datetime import datetime
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.authentication import ServiceTokenAuthentication
from accounts.models import Scope, ServiceToken
from accounts.permissions import token_scope_required
from core.accounting import CreditsField, StrictSerializer, UUIDField
from core.errors import InvalidRequestError
from core.parsers import UnicodeJSONParser
from keys import selectors
from keys.models import ApiKey, CreditPeriod
from keys.services import key_create_for_token, key_patch, key_revoke

SCOPE_SHAPE = re.compile(r"\*|[-a-zA-Z0-9_]{1,64}")
IDEMPOTENCY_KEY_MAX = 200
LIST_DEFAULT, LIST_MAX = 100, 500
REPLAY_HEADER = "Idempotent-Replayed"

KeysScope = token_scope_required(Scope.KEYS)


# Input ---------------------------------------------------------------------------------------


class LimitIn(serializers.Serializer):  # the OpenAPI description of one scope's limits
    requests_per_minute = serializers.IntegerField(min_value=1, allow_null=True, required=False)
    units_per_minute = serializers.IntegerField(min_value=1, allow_null=True, required=False)


@extend_schema_field(serializers.DictField(child=LimitIn(), allow_null=True))
class LimitsField(serializers.Field):
    """`{"<slug>" or "*": {"requests_per_minute", "units_per_minute"}}`. Only the shape of the
    map is checked here; key_settings_validate checks each scope and value, with the services'
    defaults, and lists every problem at once."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError("An object keyed by service slug or '*'.")
        bad = [scope for scope in data if not SCOPE_SHAPE.fullmatch(scope)]
        if bad:
            raise serializers.ValidationError("Keys are service slugs or '*'.")
        if len(data) > 100:
            raise serializers.ValidationError("At most 100 scopes.")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field(
    {"type": "string", "enum": CreditPeriod.values, "nullable": True, "description": "null: never"}
)
class PeriodField(serializers.ChoiceField):
    """A credit cap's period (one schema, not an enum component per field)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=CreditPeriod.choices, allow_null=True, allow_blank=True, **kwargs)

    def to_internal_value(self, data: Any) -> Any:
        return None if data == "" else super().to_internal_value(data)  # "" is null, as on the form


class KeyCreateIn(StrictSerializer):
    project = UUIDField(help_text="A project the token may see.")
    name = serializers.CharField(max_length=100)
    services = serializers.ListField(
        child=serializers.SlugField(max_length=64),
        allow_null=True,
        allow_empty=True,  # key_settings_validate answers an empty list in its words
        max_length=100,
        required=False,
        default=None,
        help_text="Slugs of the services the key may use; null: all.",
    )
    limits = LimitsField(
        allow_null=True,
        required=False,
        default=None,
        help_text="Per-minute limits per service slug, or '*' for the key as a whole; at most "
        "the service's default (a key may be tighter, never looser).",
    )
    credit_limit = CreditsField(
        positive=False,
        allow_null=True,
        required=False,
        default=None,
        help_text="Credits the key may spend (per period if credit_limit_period is set).",
    )
    credit_limit_period = PeriodField(required=False, default=None)
    expires_at = serializers.DateTimeField(allow_null=True, required=False, default=None)


class KeyUpdateIn(StrictSerializer):
    """PATCH: only the fields given change; the project and the secret never do."""

    name = serializers.CharField(max_length=100, required=False)
    services = serializers.ListField(
        child=serializers.SlugField(max_length=64),
        allow_null=True,
        allow_empty=True,
        max_length=100,
        required=False,
    )
    limits = LimitsField(allow_null=True, required=False, help_text="Replaces every limit.")
    credit_limit = CreditsField(positive=False, allow_null=True, required=False)
    credit_limit_period = PeriodField(required=False)
    expires_at = serializers.DateTimeField(allow_null=True, required=False)


# Output --------------------------------------------------------------------------------------


class KeyLimitOut(serializers.Serializer):
    requests_per_minute = serializers.IntegerField(allow_null=True)
    units_per_minute = serializers.IntegerField(allow_null=True)


class KeyOut(serializers.Serializer):
    """A key's settings: never its secret or any hash of it."""

    id = UUIDField(source="uuid")
    name = serializers.CharField()
    project = UUIDField(source="project.uuid")
    lab = UUIDField(source="project.lab.uuid")
    prefix = serializers.SerializerMethodField(help_text="sk_<lookup id>: the public part.")
    masked = serializers.CharField()
    status = serializers.SerializerMethodField()
    services = serializers.ListField(child=serializers.CharField(), allow_null=True)
    limits = serializers.SerializerMethodField(help_text="The key's own limits by scope.")
    credit_limit = serializers.DecimalField(max_digits=24, decimal_places=6, allow_null=True)
    credit_limit_period = serializers.SerializerMethodField()
    credit_used = serializers.SerializerMethodField(help_text="In the current cap period.")
    expires_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    rotated_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_prefix(self, key: ApiKey) -> str:
        return f"{ApiKey.PREFIX}{key.lookup_id}"

    @extend_schema_field({"type": "string", "description": "active, expired or revoked"})
    def get_status(self, key: ApiKey) -> str:
        return selectors.key_status(key, self.context["now"])

    @extend_schema_field(serializers.DictField(child=KeyLimitOut()))
    def get_limits(self, key: ApiKey) -> dict[str, dict[str, int | None]]:
        return selectors.key_limits(key)

    @extend_schema_field(PeriodField())
    def get_credit_limit_period(self, key: ApiKey) -> str | None:
        return key.credit_limit_period or None

    @extend_schema_field(serializers.DecimalField(max_digits=24, decimal_places=6))
    def get_credit_used(self, key: ApiKey) -> str:
        return str(selectors.key_credit_used(key, self.context["now"]))


class KeyCreatedOut(KeyOut):
    key = serializers.CharField(
        allow_null=True,
        help_text="The full key, in this answer only; null in a replay (it is not stored).",
    )
    replayed = serializers.BooleanField(help_text="True: an Idempotency-Key replay.")


class KeyPageOut(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = KeyOut(many=True)


def _key_out(key: ApiKey, now: datetime | None = None) -> dict[str, Any]:
    return KeyOut(key, context={"now": now or timezone.now()}).data


# Views ---------------------------------------------------------------------------------------


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        return None
    if len(key) > IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise InvalidRequestError(
            details={"Idempotency-Key": [f"At most {IDEMPOTENCY_KEY_MAX} printable characters."]}
        )
    return key


class KeyPagination(LimitOffsetPagination):
    default_limit = LIST_DEFAULT
    max_limit = LIST_MAX


_ERRORS = {
    400: OpenApiResponse(description="Invalid input: error_code INVALID_REQUEST, details"),
    401: OpenApiResponse(description="No or an invalid service token"),
    403: OpenApiResponse(description="The token lacks the `keys` scope"),
    404: OpenApiResponse(description="ENTITY_NOT_FOUND: no such project or key for this token"),
}

_NOT_FOUND = {status: response for status, response in _ERRORS.items() if status != 400}

_PROJECT_FILTER = OpenApiParameter(
    "project", OpenApiTypes.UUID, description="Only this project's keys (404 if not visible)."
)
_LIMIT = OpenApiParameter("limit", OpenApiTypes.INT, description=f"At most {LIST_MAX}.")
_OFFSET = OpenApiParameter("offset", OpenApiTypes.INT)
_IDEMPOTENCY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="The same key and body again answer the first key (with `key: null`); the same "
    "key with another body is a 409.",
)
_KEY_ID = OpenApiParameter("key_id", OpenApiTypes.UUID, OpenApiParameter.PATH)


class KeyListView(APIView):
    """`POST /api/v1/keys` creates a key; `GET /api/v1/keys` lists the token's keys."""

    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [KeysScope]
    parser_classes = [UnicodeJSONParser]  # Decimal amounts; a lone surrogate is a 400

    @extend_schema(
        operation_id="api_keys_create",
        summary="Create an end-user API key; the full key is in this answer only",
        request=KeyCreateIn,
        parameters=[_IDEMPOTENCY],
        responses={
            201: KeyCreatedOut,
            **_ERRORS,
            409: OpenApiResponse(description="IDEMPOTENCY_CONFLICT: the key, another body"),
        },
        tags=["keys"],
    )
    def post(self, request: Request) -> Response:
        idempotency_key = _idempotency_key(request)
        serializer = KeyCreateIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)  # KeyCreateIn's fields, each present
        created = key_create_for_token(
            token=request.auth,
            project_uuid=data.pop("project"),
            idempotency_key=idempotency_key,
            **data,
        )
        body = {**_key_out(created.key), "key": created.full_key, "replayed": created.replayed}
        headers = {REPLAY_HEADER: "true"} if created.replayed else {}
        return Response(body, status=201, headers=headers)

    @extend_schema(
        operation_id="api_keys_list",
        summary="The token's keys, newest first (never a secret)",
        parameters=[_PROJECT_FILTER, _LIMIT, _OFFSET],
        responses={200: KeyPageOut, **_ERRORS},
        tags=["keys"],
    )
    def get(self, request: Request) -> Response:
        token: ServiceToken = request.auth
        project = None
        wanted = request.query_params.get("project")
        if wanted is not None:
            try:
                project_uuid = uuid_lib.UUID(wanted)
            except ValueError:
                raise InvalidRequestError(details={"project": ["Must be a UUID."]}) from None
            project = account_selectors.project_get(actor=token, project_uuid=project_uuid)
        keys = selectors.key_list(actor=token, project=project).prefetch_related("limits")
        paginator = KeyPagination()
        page = paginator.paginate_queryset(keys, request, view=self)
        now = timezone.now()
        return paginator.get_paginated_response(KeyOut(page, many=True, context={"now": now}).data)


class KeyDetailView(APIView):
    """`GET /api/v1/keys/{id}` one key; `PATCH` changes its settings; `DELETE` revokes it
    (again: the first revocation)."""

    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [KeysScope]
    parser_classes = [UnicodeJSONParser]  # Decimal amounts; a lone surrogate is a 400

    @extend_schema(
        operation_id="api_keys_retrieve",
        summary="One key's settings (never its secret)",
        parameters=[_KEY_ID],
        responses={200: KeyOut, **_NOT_FOUND},
        tags=["keys"],
    )
    def get(self, request: Request, key_id: str) -> Response:
        return Response(_key_out(selectors.key_get(actor=request.auth, key_uuid=key_id)))

    @extend_schema(
        operation_id="api_keys_update",
        summary="Change a key's settings (the fields given); in force from the next authorize",
        parameters=[_KEY_ID],
        request=KeyUpdateIn,
        responses={200: KeyOut, **_ERRORS},
        tags=["keys"],
    )
    def patch(self, request: Request, key_id: str) -> Response:
        key = selectors.key_get(actor=request.auth, key_uuid=key_id)
        serializer = KeyUpdateIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response(_key_out(key_patch(key=key, changes=serializer.validated_data)))

    @extend_schema(
        operation_id="api_keys_revoke",
        summary="Revoke a key: refused by the next authorize; revoking again is a no-op",
        parameters=[_KEY_ID],
        responses={200: KeyOut, **_NOT_FOUND},
        tags=["keys"],
    )
    def delete(self, request: Request, key_id: str) -> Response:
        key = selectors.key_get(actor=request.auth, key_uuid=key_id)
        return Response(_key_out(key_revoke(key=key)))
