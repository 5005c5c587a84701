"""`POST /api/v1/authorize` and `POST /api/v1/usage`: the gateway's two calls around a request.

Authorize answers every outcome in one shape (`allowed`, `code`, `message`, `job_id`,
`project`, `limits`), also when the service token itself is refused, so a gateway reads one
body whatever happens. Usage answers like the rest of /api/v1 (errors as `error_code`)."""

from __future__ import annotations

import json
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import (
    REFUSED,
    ServiceTokenAuthentication,
    service_token_authenticate,
    token_parts,
    token_verified,
)
from accounts.models import Scope, ServiceToken
from accounts.permissions import token_scope_required
from core.accounting import StrictSerializer, UUIDField
from core.parsers import lone_surrogate_check
from keys.authorize import (
    UNITS_MAX,
    Code,
    Decision,
    authorize,
    authorize_once,
    token_and_key_read,
)
from keys.caps import key_job_for, key_job_usage_record
from keys.replays import MAX_LENGTH
from metering.errors import JobNotFoundError

SLUG = re.compile(r"[-a-zA-Z0-9_]{1,64}")
AUTHORIZE_FIELDS = {"key", "service", "units"}


class BadRequest(Exception):
    pass


def _units(value: Any, *, default: int | None) -> int:
    """A whole number of units, 0 to UNITS_MAX; digit strings are accepted, bools are not."""
    if value is None and default is not None:
        return default
    if isinstance(value, str) and value.isascii() and value.strip().isdecimal():
        value = int(value.strip()) if len(value.strip()) <= 16 else UNITS_MAX + 1
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UNITS_MAX:
        raise BadRequest(f"units must be a whole number from 0 to {UNITS_MAX}.")
    return value


def _authorize_input(data: Any) -> tuple[str, str, int]:
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object.")
    unknown = sorted(set(data) - AUTHORIZE_FIELDS)
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(unknown)}.")
    key, service = data.get("key"), data.get("service")
    if not isinstance(key, str) or not key:
        raise BadRequest("key is required: the end user's API key, a string.")
    if not isinstance(service, str) or not SLUG.fullmatch(service):
        raise BadRequest("service is required: a service's slug.")
    return key, service, _units(data.get("units"), default=1)


class AuthorizeIn(serializers.Serializer):  # the OpenAPI description only
    key = serializers.CharField(help_text="The end user's API key, sk_...")
    service = serializers.CharField(help_text="The service's slug, e.g. ml-llm.")
    units = serializers.IntegerField(min_value=0, default=1, help_text="Estimated units.")


class LimitOut(serializers.Serializer):
    limit = serializers.IntegerField(allow_null=True)
    remaining = serializers.IntegerField(allow_null=True)
    reset = serializers.IntegerField(allow_null=True, help_text="Seconds until one more fits.")


class CreditLimitOut(serializers.Serializer):
    limit = serializers.DecimalField(max_digits=24, decimal_places=6, allow_null=True)
    remaining = serializers.DecimalField(max_digits=24, decimal_places=6, allow_null=True)


class LimitsOut(serializers.Serializer):
    requests = LimitOut()
    units = LimitOut()
    credits = CreditLimitOut()


class DecisionOut(serializers.Serializer):
    allowed = serializers.BooleanField()
    code = serializers.CharField()
    message = serializers.CharField()
    job_id = UUIDField(allow_null=True)
    project = UUIDField(allow_null=True)
    limits = LimitsOut()


_DECISION_RESPONSES = {
    status: OpenApiResponse(DecisionOut, description=text)
    for status, text in [
        (200, "allowed: a reservation holds the estimated cost; job_id names it"),
        (400, "bad_request"),
        (401, "key_invalid, key_revoked, key_expired (or the service token is refused)"),
        (402, "quota_exceeded (the lab's plan), key_credit_limit or insufficient_funds"),
        (403, "service_unknown, service_not_allowed, service_not_priced"),
        (429, "rate_limited or units_limited, with Retry-After"),
        (503, "rate_limiter_unavailable (Redis down: limits or plan quotas, fail closed)"),
    ]
}


def _decision_response(decision: Decision) -> Response:
    return Response(decision.body(), status=decision.status, headers=decision.headers())


def _refusal_of(exc: Exception) -> Decision | None:
    """The decision-shaped answer to the token refused or a body that is not JSON."""
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        status, code = 401, "service_token_invalid"
    elif isinstance(exc, exceptions.PermissionDenied):
        status, code = 403, "service_token_forbidden"
    elif isinstance(exc, exceptions.ParseError | exceptions.UnsupportedMediaType):
        status, code = 400, Code.BAD_REQUEST  # a body that is not JSON is a bad request
    elif isinstance(exc, exceptions.APIException) and exc.status_code < 500:
        status, code = exc.status_code, Code.BAD_REQUEST
    else:
        return None
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return Decision(status=status, code=code, message=str(message))


def _http_response(decision: Decision) -> HttpResponse:
    """What JSONRenderer would write, without DRF's rendering machinery."""
    body = json.dumps(decision.body(), ensure_ascii=False, separators=(",", ":"))
    body = body.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")  # as DRF does
    response = HttpResponse(body, status=decision.status, content_type="application/json")
    response["Allow"] = "POST, OPTIONS"
    for name, value in decision.headers().items():
        response[name] = value
    if decision.code == "service_token_invalid":
        response["WWW-Authenticate"] = "Bearer"
    return response


class AuthorizeView(APIView):
    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [token_scope_required(Scope.AUTHORIZE)]
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """POST without DRF's per-request machinery (request wrapping, negotiation, parsing
        and rendering classes): gateways call it before every request they serve. The same
        token, scope and body checks and answers; other methods take DRF's path (405)."""
        if request.method != "POST":
            return super().dispatch(request, *args, **kwargs)
        try:
            return _http_response(_answer(request))
        except exceptions.APIException as exc:
            refusal = _refusal_of(exc)
            if refusal is None:
                raise
            return _http_response(refusal)

    def handle_exception(self, exc: Exception) -> Response:
        """The token refused, a body that is not JSON: still the decision shape."""
        refusal = _refusal_of(exc)
        if refusal is None:
            return super().handle_exception(exc)
        response = _decision_response(refusal)
        if refusal.status == 401:
            response["WWW-Authenticate"] = "Bearer"
        return response

    @extend_schema(request=AuthorizeIn, responses=_DECISION_RESPONSES, tags=["keys"])
    def post(self, request: Request) -> Response:
        """The schema's, and DRF's list of allowed methods: dispatch answers POSTs itself."""
        return _decision_response(_answer(request._request))


_AUTHORIZE_SCOPE = token_scope_required(Scope.AUTHORIZE)()


def _answer(request: HttpRequest) -> Decision:
    """The decision; a refused service token raises DRF's exception, as DRF would have. A
    refused token answers before a bad body; with a good body and no Idempotency-Key, the
    token and the key are read in one statement."""
    raw_token = ServiceTokenAuthentication.presented(request)
    if raw_token is None:
        raise exceptions.NotAuthenticated()
    raw_header = request.headers.get("Idempotency-Key")
    try:
        key, service, units = _authorize_input(_json_body(request))
        header = _idempotency_header(raw_header)
    except (exceptions.ParseError, exceptions.UnsupportedMediaType, BadRequest) as exc:
        _scope_checked(service_token_authenticate(raw_token))
        if isinstance(exc, BadRequest):
            return Decision(status=400, code=Code.BAD_REQUEST, message=str(exc))
        raise
    except RequestDataTooBig:
        _scope_checked(service_token_authenticate(raw_token))
        message = f"The body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        return Decision(status=400, code=Code.BAD_REQUEST, message=message)
    if header:
        token = _scope_checked(service_token_authenticate(raw_token))
        return authorize_once(token=token, raw_key=key, slug=service, units=units, header=header)
    parts = token_parts(raw_token)
    unverified, read = token_and_key_read(
        token_lookup=parts[0] if parts else None, raw_key=key, slug=service
    )
    token = _scope_checked(token_verified(unverified, parts[1]) if parts else None)
    return authorize(token=token, raw_key=key, slug=service, units=units, read=read)


def _scope_checked(token: ServiceToken | None) -> ServiceToken:
    if token is None:
        raise exceptions.AuthenticationFailed(REFUSED)
    if not token.has_scope(Scope.AUTHORIZE):
        raise exceptions.PermissionDenied(_AUTHORIZE_SCOPE.message)
    return token


def _idempotency_header(raw_header: str | None) -> str:
    header = (raw_header or "").strip(" \t")
    if len(header) > MAX_LENGTH or not header.isprintable() or (raw_header and not header):
        raise BadRequest(f"Idempotency-Key: at most {MAX_LENGTH} printable characters.")
    return header


def _json_body(request: HttpRequest) -> Any:
    """What DRF's request.data gives with JSONParser alone: an empty body is an empty object,
    another body must be JSON."""
    raw = request.body
    if not raw:
        return {}
    if request.content_type != "application/json":
        raise exceptions.UnsupportedMediaType(request.META.get("CONTENT_TYPE", ""))
    try:
        text = raw.decode(request.encoding or "utf-8")
        data = json.loads(text, parse_constant=_no_constant)
        lone_surrogate_check(text, data)  # no answer can echo one
        return data
    except (ValueError, LookupError, RecursionError) as exc:  # also charset=base64, [[[[...
        raise exceptions.ParseError(f"JSON parse error - {exc}") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"Out of range float values are not JSON compliant: {name!r}")


class AuthorizedUsageIn(StrictSerializer):
    job_id = UUIDField()
    units = serializers.IntegerField(min_value=0, max_value=UNITS_MAX)


class AuthorizedUsageOut(serializers.Serializer):
    job_id = UUIDField()
    units = serializers.IntegerField()
    charged = serializers.DecimalField(max_digits=24, decimal_places=6)
    reserved = serializers.DecimalField(max_digits=24, decimal_places=6)


class AuthorizedUsageView(APIView):
    """Settle an authorized job with its actual units, like oneshot usage: the hold first,
    the project for any excess, the rest released; the key's cap and its units/min window
    take the actual figures. The same units again answer the same; other units are 409."""

    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [token_scope_required(Scope.USAGE)]

    @extend_schema(request=AuthorizedUsageIn, responses={200: AuthorizedUsageOut}, tags=["keys"])
    def post(self, request: Request) -> Response:
        serializer = AuthorizedUsageIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        token: ServiceToken = request.auth
        key_job = key_job_for(data["job_id"])
        if key_job is None or (token.lab_id is not None and key_job.job.lab_id != token.lab_id):
            raise JobNotFoundError()
        job = key_job_usage_record(key_job=key_job, units=data["units"], token=token)
        return Response(
            {
                "job_id": str(job.uuid),
                "units": data["units"],
                "charged": str(job.charged_amount),
                "reserved": str(job.reserved_amount),
            }
        )
