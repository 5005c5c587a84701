"""Batch usage ingestion: `POST /api/v1/usage/events`, for service tokens with the `usage` scope.

The answer is 200 whenever the batch was well formed: every event then has a durable outcome,
given per event in `results` (accepted, duplicate, or rejected with a reason). 207 Multi-Status
would say the same with a WebDAV status code that HTTP clients treat as an oddity; a 400 means
the batch itself was refused and nothing was written.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.decorators import (
    api_view,
    authentication_classes,
    parser_classes,
    permission_classes,
)
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.authentication import ServiceTokenAuthentication
from accounts.models import Scope, ServiceToken
from accounts.permissions import token_scope_required
from core.accounting import UUIDField
from core.errors import InvalidRequestError
from core.parsers import DecimalJSONParser
from metering import ingestion
from metering.models import ServiceType, UsageEventOutcome

# The OpenAPI description only: events are checked one by one by metering/ingestion.py, so
# that one bad event is a rejection in the answer, not a 400 for the whole batch.


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "format": "date-time"},
            {"type": "integer", "description": "seconds since the Unix epoch"},
        ]
    }
)
class TimestampField(serializers.Field):
    pass


class UsageEventIn(serializers.Serializer):
    id = serializers.CharField(
        max_length=ingestion.ID_MAX_LENGTH, help_text="Unique per token: a resend is a duplicate."
    )
    project = UUIDField(help_text="A project the token may see.")
    service = serializers.CharField(max_length=64, help_text="The service's slug, e.g. ml-llm.")
    type = serializers.ChoiceField(
        choices=ServiceType.choices,
        required=False,
        allow_null=True,
        help_text="Needed only when the slug is sold as several types and none is oneshot.",
    )
    units = serializers.IntegerField(min_value=0, max_value=ingestion.UNITS_MAX)
    timestamp = TimestampField(
        help_text="ISO-8601 (UTC if no offset) or integer epoch seconds; from "
        "USAGE_MAX_PAST_SECONDS ago to USAGE_MAX_FUTURE_SECONDS ahead."
    )
    job = UUIDField(required=False, allow_null=True)
    key = serializers.CharField(
        max_length=ingestion.KEY_MAX_LENGTH,
        required=False,
        allow_null=True,
        help_text="The end user's API key, if any: its id or its prefix (sk_<lookup id>) puts "
        "the event on that key's usage page; a whole key is kept as its prefix only.",
    )


class UsageEventsIn(serializers.Serializer):
    events = UsageEventIn(many=True, max_length=ingestion.MAX_EVENTS)


class UsageEventResultOut(serializers.Serializer):
    id = serializers.CharField()
    status = serializers.ChoiceField(
        choices=[
            ingestion.EventStatus.ACCEPTED,
            ingestion.EventStatus.DUPLICATE,
            ingestion.EventStatus.REJECTED,
        ],
        help_text="What this request did with the event.",
    )
    outcome = serializers.ChoiceField(
        choices=UsageEventOutcome.choices,
        help_text="The event's outcome: for a duplicate, the one it got the first time.",
    )
    reason = serializers.CharField(
        allow_null=True,
        help_text="Why it was rejected: " + ", ".join(sorted(ingestion.REASON_MESSAGES)),
    )
    message = serializers.CharField(allow_null=True)


class UsageEventsOut(serializers.Serializer):
    results = UsageEventResultOut(many=True)
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()


class UsageEventsErrorOut(serializers.Serializer):
    """The one error shape of the API (core/errors.py)."""

    error_code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.JSONField(allow_null=True)


def _body(result: ingestion.IngestResult) -> dict[str, Any]:
    # By hand, not through the serializer: a thousand events are a hot path.
    return {
        "results": [
            {
                "id": r.id,
                "status": r.status,
                "outcome": r.outcome,
                "reason": r.reason,
                "message": r.message,
            }
            for r in result.results
        ],
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "rejected": result.rejected,
    }


@extend_schema(
    operation_id="usage_events_create",
    request=UsageEventsIn,
    responses={
        200: UsageEventsOut,
        400: UsageEventsErrorOut,
        401: UsageEventsErrorOut,
        403: UsageEventsErrorOut,
    },
    tags=["usage"],
    description=(
        f"Post up to {ingestion.MAX_EVENTS} usage events. Each gets an outcome; accepted events "
        "are recorded when the answer returns and charged by the next settlement run, summed "
        "per project and service. A malformed batch is a 400 and writes nothing."
    ),
    examples=[
        OpenApiExample(
            "A batch",
            request_only=True,
            value={
                "events": [
                    {
                        "id": "evt-1",
                        "project": "7f1b2c9e-4f51-4a43-9d0e-1a2b3c4d5e6f",
                        "service": "ml-llm",
                        "units": 1200,
                        "timestamp": 1795420800,
                        "key": "sk_4k2m9x7q1z0a",
                    }
                ]
            },
        )
    ],
)
@api_view(["POST"])
@authentication_classes([ServiceTokenAuthentication])
@permission_classes([token_scope_required(Scope.USAGE)])
# Not the default UnicodeJSONParser: an event with a lone surrogate is one rejected event (the
# ingestion checks each), not a refused batch.
@parser_classes([DecimalJSONParser])
def usage_events(request: Request) -> Response:
    data = request.data
    if not isinstance(data, dict) or "events" not in data:
        raise InvalidRequestError(
            'The body must be a JSON object {"events": [...]}', details={"events": "required"}
        )
    token: ServiceToken = request.auth  # type: ignore[assignment]
    result = ingestion.usage_events_ingest(token=token, events=data["events"])
    return Response(_body(result))
