"""Our API errors and the handler that renders every API error in one shape:

    {"error_code": "ENTITY_NOT_FOUND", "message": "Project not found", "details": null}

The shape is the accounting-service's, so the compatible surface and ours agree.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ApiError(Exception):
    """A failure the caller can act on: a machine code, a human message, optional details."""

    status_code = status.HTTP_400_BAD_REQUEST
    error_code = "INVALID_REQUEST"
    default_message = "Invalid request"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        error_code: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        if error_code is not None:
            self.error_code = error_code
        if status_code is not None:
            self.status_code = status_code
        super().__init__(self.message)


class InvalidRequestError(ApiError):
    pass


class NotFoundError(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    error_code = "ENTITY_NOT_FOUND"
    default_message = "Not found"


class ConflictError(ApiError):
    status_code = status.HTTP_409_CONFLICT
    error_code = "CONFLICT"
    default_message = "It already exists"


# DRF's own exceptions, mapped to our codes.
_DRF_CODES: list[tuple[type[exceptions.APIException], str]] = [
    (exceptions.NotAuthenticated, "UNAUTHORIZED"),
    (exceptions.AuthenticationFailed, "UNAUTHORIZED"),
    (exceptions.PermissionDenied, "FORBIDDEN"),
    (exceptions.NotFound, "ENTITY_NOT_FOUND"),
    (exceptions.MethodNotAllowed, "METHOD_NOT_ALLOWED"),
    (exceptions.NotAcceptable, "NOT_ACCEPTABLE"),
    (exceptions.UnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE"),
    (exceptions.Throttled, "RATE_LIMITED"),
    (exceptions.ParseError, "INVALID_REQUEST"),
    (exceptions.ValidationError, "INVALID_REQUEST"),
]


def error_body(error_code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error_code": error_code, "message": message, "details": details}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApiError):
        return Response(error_body(exc.error_code, exc.message, exc.details), exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    # DRF's handler sets headers such as WWW-Authenticate and Retry-After.
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response  # an unexpected error: a real 500, logged by Django
    code = next((c for cls, c in _DRF_CODES if isinstance(exc, cls)), "ERROR")
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body(code, "Validation error", exc.detail)
    else:
        response.data = error_body(code, str(exc.detail))
    return response
