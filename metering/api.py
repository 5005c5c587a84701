"""Accounting-service routes for prices, discounts and estimates (/api/accounting/...)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ErrorDetail
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import selectors as account_selectors
from accounts.errors import LabNotFoundError
from accounts.models import Lab
from billing.api import AccountingTokenView, GlobalTokenView
from core.accounting import CreditsField, StrictSerializer, UUIDField, envelope, enveloped
from core.money import credits_format_cents
from metering import reservations, selectors, services
from metering.constants import (
    LEGACY_SUBTYPES,
    MAX_DURATION_SECONDS,
    MAX_INSTANCES,
    MAX_LABEL,
    MAX_QUANTITY,
    SUBTYPES,
)
from metering.cost import Tier
from metering.errors import (
    JobNotFoundError,
    NoCurrentDiscountError,
    PriceError,
)
from metering.models import Discount, Job, Service, ServiceType


class AwareDateTimeField(serializers.DateTimeField):
    """A datetime with its timezone, as the reference requires (`AwareDatetime`)."""

    def to_internal_value(self, value: Any) -> datetime:
        try:
            given = parse_datetime(value) if isinstance(value, str) else None
        except ValueError as exc:  # well formed, but no such moment: 2024-02-30, 25:00
            raise serializers.ValidationError(
                "Input should be a valid datetime", code="datetime_parsing"
            ) from exc
        if given is not None and given.tzinfo is None:
            raise serializers.ValidationError(
                "Input should have timezone info", code="timezone_aware"
            )
        return super().to_internal_value(value)


@extend_schema_field({"type": "string", "format": "decimal", "example": "0.00001"})
class ExactDecimalField(serializers.Field):
    """A non-negative decimal kept exactly as sent (a string or a JSON number), never rounded:
    prices keep full precision (a storage price per byte-second is tiny)."""

    def __init__(self, *, places: int, **kwargs: Any) -> None:
        self.places = places
        super().__init__(**kwargs)

    def to_internal_value(self, value: Any) -> Decimal:
        try:
            number = Decimal(str(value)) if not isinstance(value, bool) else None
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite():
            raise serializers.ValidationError(
                "Input should be a valid decimal", code="decimal_parsing"
            )
        if number < 0:
            raise serializers.ValidationError(
                "Input should be greater than or equal to 0", code="greater_than_equal"
            )
        if number.as_tuple().exponent < -self.places or abs(number) >= Decimal(10) ** 18:
            # Stored as NUMERIC(…, places): refuse what the database would round.
            raise serializers.ValidationError(
                f"Input should have at most {self.places} decimal places and be below 1e18",
                code="decimal_max_places",
            )
        return number

    def to_representation(self, value: Decimal) -> str:
        return str(value)


def _value_error(field: str, message: str) -> serializers.ValidationError:
    return serializers.ValidationError({field: [ErrorDetail(message, "value_error")]})


def subtype_field() -> serializers.ChoiceField:
    return serializers.ChoiceField(choices=SUBTYPES)


def _not_legacy(subtype: str) -> str:
    if subtype in LEGACY_SUBTYPES:
        raise serializers.ValidationError(f"subtype `{subtype}` is legacy", code="value_error")
    return subtype


class TierIn(StrictSerializer):
    min_quantity = serializers.IntegerField(min_value=0, max_value=MAX_QUANTITY)
    max_quantity = serializers.IntegerField(
        min_value=0, max_value=MAX_QUANTITY, allow_null=True, required=False
    )
    fixed_cost = ExactDecimalField(places=12)
    multiplier = ExactDecimalField(places=40)


class PriceIn(StrictSerializer):
    service_type = serializers.ChoiceField(choices=ServiceType.values)
    service_subtype = subtype_field()
    valid_from = AwareDateTimeField()
    valid_to = AwareDateTimeField(allow_null=True, required=False)
    vlab_id = UUIDField(allow_null=True, required=False)
    tiers = TierIn(many=True, allow_empty=False)

    def validate_service_subtype(self, value: str) -> str:
        return _not_legacy(value)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        valid_to = data.get("valid_to")
        if valid_to is not None and valid_to <= data["valid_from"]:
            raise _value_error("valid_to", "valid_to must be greater than valid_from")
        return data


class PriceView(GlobalTokenView):
    @extend_schema(
        request=PriceIn, responses={201: enveloped("PriceOut")}, tags=["accounting: prices"]
    )
    def post(self, request: Request) -> Response:
        data = self.valid(PriceIn)
        lab = self.lab(data["vlab_id"]) if data.get("vlab_id") else None
        with transaction.atomic():  # a refused price leaves no new service behind
            return self._price_created(data, lab)

    def _price_created(self, data: dict[str, Any], lab: Lab | None) -> Response:
        service, _ = Service.objects.get_or_create(
            type=data["service_type"],
            slug=data["service_subtype"],
            defaults={"name": data["service_subtype"], "unit_label": "unit"},
        )
        tiers = [
            Tier(t["min_quantity"], t.get("max_quantity"), t["fixed_cost"], t["multiplier"])
            for t in data["tiers"]
        ]
        try:
            price = services.price_create(
                service=service,
                tiers=tiers,
                valid_from=data["valid_from"],
                valid_to=data.get("valid_to"),
                lab=lab,
            )
        except PriceError as exc:
            raise _value_error("tiers", exc.message) from exc
        stored = list(price.tiers.all())
        body = {
            "id": price.pk,
            "service_type": service.type,
            "service_subtype": service.slug,
            "valid_from": data["valid_from"],
            "valid_to": data.get("valid_to"),
            "vlab_id": str(lab.uuid) if lab else None,
            "tiers": [
                {
                    "id": row.pk,
                    "min_quantity": tier.min_quantity,
                    "max_quantity": tier.max_quantity,
                    "fixed_cost": str(tier.fixed_cost),
                    "multiplier": str(tier.multiplier),
                }
                for row, tier in zip(
                    stored, sorted(tiers, key=lambda t: t.min_quantity), strict=True
                )
            ],
        }
        return envelope("Price added", body, status.HTTP_201_CREATED)


class DiscountIn(StrictSerializer):
    vlab_id = UUIDField()
    discount = serializers.DecimalField(
        max_digits=7, decimal_places=6, min_value=Decimal(0), max_value=Decimal(1)
    )
    valid_from = AwareDateTimeField()
    valid_to = AwareDateTimeField(allow_null=True, required=False)


def _discount_out(discount: Discount) -> dict[str, Any]:
    return {
        "id": discount.pk,
        "vlab_id": str(discount.lab.uuid),
        "discount": str(discount.discount.normalize()),
        "valid_from": discount.valid_from,
        "valid_to": discount.valid_to,
    }


class DiscountView(GlobalTokenView):
    @extend_schema(
        request=DiscountIn, responses={201: enveloped("DiscountOut")}, tags=["accounting: prices"]
    )
    def post(self, request: Request) -> Response:
        data = self.valid(DiscountIn)
        lab = self.lab(data["vlab_id"])
        try:
            discount = services.discount_create(
                lab=lab,
                discount=data["discount"],
                valid_from=data["valid_from"],
                valid_to=data.get("valid_to"),
            )
        except PriceError as exc:
            raise _value_error("valid_to", exc.message) from exc
        return envelope("Discount created", _discount_out(discount), status.HTTP_201_CREATED)


class LabDiscountsView(AccountingTokenView):
    @extend_schema(responses=enveloped("DiscountListOut"), tags=["accounting: prices"])
    def get(self, request: Request, vlab_id: str) -> Response:
        key = self.path_uuid(vlab_id, "vlab_id")
        try:
            lab = self.lab(key)
        except LabNotFoundError:  # the reference answers an empty list for an unknown lab
            return envelope("Virtual lab discounts fetched", [])
        discounts = lab.discounts.select_related("lab").order_by("-valid_from", "-id")
        return envelope("Virtual lab discounts fetched", [_discount_out(d) for d in discounts])


class CurrentDiscountView(AccountingTokenView):
    @extend_schema(responses=enveloped("CurrentDiscountOut"), tags=["accounting: prices"])
    def get(self, request: Request, vlab_id: str) -> Response:
        lab = self.lab(self.path_uuid(vlab_id, "vlab_id"))
        discount = selectors.discount_current(lab=lab, at=timezone.now())
        if discount is None:
            raise NoCurrentDiscountError()
        return envelope("Current virtual lab discount fetched", _discount_out(discount))


class EstimateIn(StrictSerializer):
    proj_id = UUIDField()
    type = serializers.ChoiceField(choices=[ServiceType.ONESHOT.value])
    subtype = subtype_field()
    count = serializers.IntegerField(min_value=0)  # any size: the reference's 402 / estimate

    def validate_subtype(self, value: str) -> str:
        return _not_legacy(value)


class EstimateView(AccountingTokenView):
    @extend_schema(
        request=EstimateIn, responses=enveloped("EstimateOut"), tags=["accounting: prices"]
    )
    def post(self, request: Request) -> Response:
        data = self.valid(EstimateIn)
        project = self.project(data["proj_id"])
        cost = selectors.cost_estimate(
            project=project, kind=data["type"], subtype=data["subtype"], quantity=data["count"]
        )
        return envelope("Cost estimation for oneshot job", {"cost": credits_format_cents(cost)})


class ReservationIn(StrictSerializer):
    proj_id = UUIDField()
    user_id = UUIDField()
    group_id = UUIDField(allow_null=True, required=False)
    name = serializers.CharField(max_length=255, allow_null=True, allow_blank=True, required=False)
    subtype = subtype_field()

    def validate_subtype(self, value: str) -> str:
        return _not_legacy(value)


class OneshotReservationIn(ReservationIn):
    type = serializers.ChoiceField(choices=[ServiceType.ONESHOT.value])
    count = serializers.IntegerField(min_value=0)  # any size: the reference's 402 / estimate


class LongrunReservationIn(ReservationIn):
    type = serializers.ChoiceField(choices=[ServiceType.LONGRUN.value])
    duration = serializers.IntegerField(min_value=0, max_value=MAX_DURATION_SECONDS)
    instances = serializers.IntegerField(min_value=0, max_value=MAX_INSTANCES)
    instance_type = serializers.CharField(
        max_length=MAX_LABEL, allow_null=True, allow_blank=True, required=False
    )


class ReservationView(AccountingTokenView):
    kind = ServiceType.ONESHOT
    serializer_class: type[ReservationIn] = OneshotReservationIn
    message = "Oneshot reservation executed"

    def quantity_and_params(self, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return data["count"], {"count": data["count"]}

    def post(self, request: Request) -> Response:
        data = self.valid(self.serializer_class)
        key = self.idempotency_key()
        quantity, params = self.quantity_and_params(data)
        details = {
            "params": params,
            "user_uuid": data["user_id"],
            "group_uuid": data.get("group_id"),
            "name": data.get("name") or "",
        }

        def create() -> Job:
            project = self.project(data["proj_id"], message="Account not found")
            service = selectors.service_priced(
                kind=self.kind, subtype=data["subtype"], lab=project.lab, at=timezone.now()
            )
            return reservations.reservation_create(
                project=project,
                service=service,
                quantity=quantity,
                **details,
                actor=self.token,
                idempotency_key=key,
                fingerprint=fingerprint,
            )

        fingerprint = reservations.reservation_fingerprint(
            kind=self.kind,
            subtype=data["subtype"],
            project=data["proj_id"],
            quantity=quantity,
            **details,
        )
        job = reservations.reservation_once(
            idempotency_key=key, fingerprint=fingerprint, create=create
        )
        return envelope(
            self.message,
            {"job_id": str(job.uuid), "amount": str(job.reserved_amount)},
            status.HTTP_201_CREATED,
        )


class OneshotReservationView(ReservationView):
    @extend_schema(
        request=OneshotReservationIn,
        responses={201: enveloped("OneshotReservationOut")},
        tags=["accounting: reservations"],
    )
    def post(self, request: Request) -> Response:
        return super().post(request)


class LongrunReservationView(ReservationView):
    kind = ServiceType.LONGRUN
    serializer_class = LongrunReservationIn
    message = "Longrun reservation executed"

    def quantity_and_params(self, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        params = {
            "duration": data["duration"],
            "instances": data["instances"],
            "instance_type": data.get("instance_type"),
        }
        return data["instances"] * data["duration"], params

    @extend_schema(
        request=LongrunReservationIn,
        responses={201: enveloped("LongrunReservationOut")},
        tags=["accounting: reservations"],
    )
    def post(self, request: Request) -> Response:
        return super().post(request)


class ReleaseView(AccountingTokenView):
    kind = ServiceType.ONESHOT
    message = "Oneshot reservation has been released"

    @extend_schema(
        # A DELETE is documented as a 204 unless told: this one answers 200 with the release.
        responses={
            200: enveloped(
                "ReleaseOut",
                inline_serializer(
                    name="Released",
                    fields={"job_id": UUIDField(), "amount": CreditsField(positive=False)},
                ),
            )
        },
        tags=["accounting: reservations"],
    )
    def delete(self, request: Request, job_id: str) -> Response:
        key = self.path_uuid(job_id, "job_id")
        visible = account_selectors.project_list(actor=self.token)
        job = Job.objects.filter(uuid=key, service__type=self.kind, project__in=visible).first()
        if job is None:
            raise JobNotFoundError()
        job, released = reservations.reservation_release(job=job, actor=self.token)
        return envelope(self.message, {"job_id": str(job.uuid), "amount": str(released)})


class LongrunReleaseView(ReleaseView):
    kind = ServiceType.LONGRUN
    message = "Longrun reservation has been released"
