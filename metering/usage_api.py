"""Accounting-service usage routes (/api/accounting/usage/...): the SDK's wire bodies.

Unlike the reference, which queued events and failed them silently later, every event is
checked and applied before the answer: 201 means it is recorded (and, for oneshot usage and
finished long-running jobs, charged); anything else says what is wrong.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from billing.api import AccountingTokenView
from core.accounting import StrictSerializer, UUIDField, envelope, enveloped
from metering import selectors, usage
from metering.api import subtype_field
from metering.constants import MAX_INSTANCES, MAX_LABEL, MAX_QUANTITY, MAX_STORAGE_BYTES
from metering.models import ServiceType


class EpochSecondsField(serializers.IntegerField):
    """Seconds since the Unix epoch (an int or a numeric string, as the SDK sends it), within
    USAGE_MAX_PAST_SECONDS before and USAGE_MAX_FUTURE_SECONDS after now."""

    def to_internal_value(self, data: Any) -> datetime:  # type: ignore[override]
        seconds = super().to_internal_value(data)
        now = timezone.now()
        try:
            moment = datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise serializers.ValidationError("Invalid timestamp", code="value_error") from exc
        if not (
            now - timedelta(seconds=settings.USAGE_MAX_PAST_SECONDS)
            < moment
            < now + timedelta(seconds=settings.USAGE_MAX_FUTURE_SECONDS)
        ):
            raise serializers.ValidationError(
                "timestamp must be within the accepted window", code="value_error"
            )
        return moment


class UsageIn(StrictSerializer):
    proj_id = UUIDField()
    subtype = subtype_field()
    timestamp = EpochSecondsField()


class JobUsageIn(UsageIn):
    job_id = UUIDField()
    name = serializers.CharField(max_length=255, allow_null=True, allow_blank=True, required=False)


class OneshotUsageIn(JobUsageIn):
    type = serializers.ChoiceField(choices=[ServiceType.ONESHOT.value])
    count = serializers.IntegerField(min_value=0, max_value=MAX_QUANTITY)


class LongrunUsageIn(JobUsageIn):
    type = serializers.ChoiceField(choices=[ServiceType.LONGRUN.value])
    status = serializers.ChoiceField(choices=usage.LongrunStatus.ALL)
    instances = serializers.IntegerField(
        min_value=0, max_value=MAX_INSTANCES, allow_null=True, required=False
    )
    instance_type = serializers.CharField(
        max_length=MAX_LABEL, allow_null=True, allow_blank=True, required=False
    )


class StorageUsageIn(UsageIn):
    type = serializers.ChoiceField(choices=[ServiceType.STORAGE.value])
    subtype = serializers.ChoiceField(choices=["storage"], default="storage")
    size = serializers.IntegerField(min_value=0, max_value=MAX_STORAGE_BYTES)


class OneshotUsageView(AccountingTokenView):
    @extend_schema(
        request=OneshotUsageIn,
        responses={201: enveloped("OneshotUsageOut")},
        tags=["accounting: usage"],
    )
    def post(self, request: Request) -> Response:
        data = self.valid(OneshotUsageIn)
        project = self.project(data["proj_id"])
        usage.oneshot_usage_record(
            job_uuid=data["job_id"],
            project=project,
            subtype=data["subtype"],
            count=data["count"],
            at=data["timestamp"],
            name=data.get("name"),
            actor=self.token,
        )
        return envelope("Oneshot usage received", None, status.HTTP_201_CREATED)


class LongrunUsageView(AccountingTokenView):
    @extend_schema(
        request=LongrunUsageIn,
        responses={201: enveloped("LongrunUsageOut")},
        tags=["accounting: usage"],
    )
    def post(self, request: Request) -> Response:
        data = self.valid(LongrunUsageIn)
        project = self.project(data["proj_id"])
        usage.longrun_event_record(
            job_uuid=data["job_id"],
            project=project,
            subtype=data["subtype"],
            status=data["status"],
            at=data["timestamp"],
            instances=data.get("instances"),
            instance_type=data.get("instance_type"),
            name=data.get("name"),
            actor=self.token,
        )
        return envelope("Longrun usage received", None, status.HTTP_201_CREATED)


class StorageUsageView(AccountingTokenView):
    @extend_schema(
        request=StorageUsageIn,
        responses={201: enveloped("StorageUsageOut")},
        tags=["accounting: usage"],
    )
    def post(self, request: Request) -> Response:
        data = self.valid(StorageUsageIn)
        project = self.project(data["proj_id"])
        service = selectors.service_priced(
            kind=ServiceType.STORAGE, subtype=data["subtype"], lab=project.lab, at=timezone.now()
        )
        usage.storage_event_record(
            project=project,
            service=service,
            size=data["size"],
            at=data["timestamp"],
            actor=self.token,
        )
        return envelope("Storage usage received", None, status.HTTP_201_CREATED)
