"""The accounting-service surface (/api/accounting/), shared by billing and metering views.

It answers like the service it replaces: `{"message", "data"}` on success, and
`{"error_code", "message", "details"}` on errors, with 422 and a list of
`{"type", "loc", "msg"}` for invalid requests.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import api_exception_handler, error_body
from core.money import AmountError, credits_parse
from core.parsers import UnicodeJSONParser


def envelope(message: str, data: Any = None, status_code: int = status.HTTP_200_OK) -> Response:
    return Response({"message": message, "data": data}, status=status_code)


def _validation_details(detail: Any, loc: list[Any]) -> list[dict[str, Any]]:
    if isinstance(detail, dict):
        return [
            d
            for key, value in detail.items()
            for d in _validation_details(value, loc if key == "non_field_errors" else [*loc, key])
        ]
    if isinstance(detail, list):
        if all(isinstance(item, exceptions.ErrorDetail) for item in detail):
            return [_detail(item, loc) for item in detail]
        return [d for i, item in enumerate(detail) for d in _validation_details(item, [*loc, i])]
    return [_detail(detail, loc)]


# DRF's codes where the reference (pydantic) has its own words.
_REFERENCE_WORDS = {"required": ("missing", "Field required")}


def _detail(item: Any, loc: list[Any]) -> dict[str, Any]:
    code = getattr(item, "code", "invalid")
    kind, message = _REFERENCE_WORDS.get(code, (code, str(item)))
    return {"type": kind, "loc": loc, "msg": message}


def accounting_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, exceptions.ValidationError):
        details = _validation_details(exc.detail, ["body"])
    elif isinstance(exc, exceptions.ParseError):
        details = [{"type": "json_invalid", "loc": ["body"], "msg": str(exc.detail)}]
    else:
        return api_exception_handler(exc, context)
    return Response(
        error_body("INVALID_REQUEST", "Validation error", details),
        status=status.HTTP_422_UNPROCESSABLE_ENTITY,
    )


class UUIDField(serializers.UUIDField):
    """A UUID sent as a string, as the reference takes it: DRF's own also takes an integer,
    so `true` or `1` would name the UUID 00000000-…-0001."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, as the reference does (`extra="forbid"`)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise exceptions.ValidationError(
                    {
                        name: [
                            exceptions.ErrorDetail(
                                "Extra inputs are not permitted", "extra_forbidden"
                            )
                        ]
                        for name in unknown
                    }
                )
        return super().to_internal_value(data)


def enveloped(name: str, data: serializers.Field | None = None) -> serializers.Serializer:
    """The OpenAPI shape of a success body: `{"message": str, "data": <data> | null}`."""
    return inline_serializer(
        name=name,
        fields={
            "message": serializers.CharField(),
            "data": data if data is not None else serializers.JSONField(allow_null=True),
        },
    )


@extend_schema_field({"type": "string", "format": "decimal", "example": "100.00"})
class CreditsField(serializers.Field):
    """A credit amount: a JSON number or string, exact, at most six decimal places."""

    def __init__(self, *, positive: bool = True, **kwargs: Any) -> None:
        self.positive = positive
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Decimal:
        try:
            amount = credits_parse(data, positive=False)
        except AmountError as exc:
            raise serializers.ValidationError(str(exc), code="decimal_parsing") from exc
        if self.positive and amount <= 0:
            raise serializers.ValidationError("Input should be greater than 0", code="greater_than")
        if amount < 0:
            raise serializers.ValidationError(
                "Input should be greater than or equal to 0", code="greater_than_equal"
            )
        return amount

    def to_representation(self, value: Decimal) -> str:
        return str(value)


class AccountingView(APIView):
    """Base of every /api/accounting/ view: service tokens only, Decimal JSON, reference errors."""

    parser_classes = [UnicodeJSONParser]  # Decimal numbers: money depends on it

    def get_exception_handler(self):  # type: ignore[no-untyped-def]
        return accounting_exception_handler

    def path_uuid(self, value: str, name: str) -> uuid.UUID:
        """A UUID from the path; anything else is a 422, as the reference answers."""
        try:
            return uuid.UUID(value)
        except ValueError as exc:
            raise exceptions.ValidationError(
                {name: [exceptions.ErrorDetail("Input should be a valid UUID", "uuid_parsing")]}
            ) from exc

    def idempotency_key(self) -> str | None:
        """`Idempotency-Key` header, scoped to the calling token so callers cannot collide."""
        key = self.request.headers.get("Idempotency-Key", "").strip()
        if not key:
            return None
        if len(key) > 200:
            raise exceptions.ValidationError({"Idempotency-Key": ["At most 200 characters"]})
        return f"token:{self.request.auth.pk}:{key}"
