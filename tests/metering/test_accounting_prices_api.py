"""/api/accounting/ price, discount and estimate routes, in the reference's shapes."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering.models import Discount, Price

LLM_PRICE = {
    "service_type": "oneshot",
    "service_subtype": "ml-llm",
    "valid_from": "2024-01-01T00:00:00Z",
    "valid_to": None,
    "vlab_id": None,
    "tiers": [
        {"min_quantity": 0, "max_quantity": None, "fixed_cost": "0", "multiplier": "0.00001"}
    ],
}


@pytest.fixture
def gateway(token_client, db):
    return token_client(["accounting"])


def post(client, path, body):
    return client.post(f"/api/accounting/{path}", body, format="json")


def test_price_added_echoes_the_price_with_ids(gateway):
    response = post(gateway, "price", LLM_PRICE)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["message"] == "Price added"
    price = Price.objects.get()
    assert body["data"]["id"] == price.pk
    assert body["data"]["tiers"] == [
        {
            "id": price.tiers.get().pk,
            "min_quantity": 0,
            "max_quantity": None,
            "fixed_cost": "0",
            "multiplier": "0.00001",
        }
    ]


@pytest.mark.parametrize(
    ("change", "loc", "kind"),
    [
        ({"tiers": []}, ["body", "tiers"], "empty"),
        ({"tiers": [{"min_quantity": 0, "max_quantity": None, "fixed_cost": "0", "multiplier": "-1"}]}, ["body", "tiers", 0, "multiplier"], "greater_than_equal"),
        ({"tiers": [{"min_quantity": 5, "max_quantity": None, "fixed_cost": "0", "multiplier": "1"}]}, ["body", "tiers"], "value_error"),
        ({"valid_to": "2023-01-01T00:00:00Z"}, ["body", "valid_to"], "value_error"),
        ({"valid_from": "2024-01-01T00:00:00"}, ["body", "valid_from"], "timezone_aware"),
        ({"service_subtype": "ml-retrieval"}, ["body", "service_subtype"], "value_error"),
        ({"service_subtype": "no-such-thing"}, ["body", "service_subtype"], "invalid_choice"),
        ({"colour": "red"}, ["body", "colour"], "extra_forbidden"),
    ],
)  # fmt: skip
def test_bad_prices_are_422_and_write_nothing(gateway, change, loc, kind):
    response = post(gateway, "price", LLM_PRICE | change)
    assert response.status_code == 422
    detail = response.json()["details"][0]
    assert (detail["loc"], detail["type"]) == (loc, kind)
    assert Price.objects.count() == 0


def test_a_price_for_an_unknown_lab_is_404(gateway):
    response = post(gateway, "price", LLM_PRICE | {"vlab_id": str(uuid.uuid4())})
    assert response.status_code == 404
    assert response.json()["message"] == "Virtual lab not found"


def test_estimate_uses_the_lab_discount(gateway, cast):
    post(gateway, "price", LLM_PRICE)
    body = {
        "proj_id": str(cast.alpha.uuid),
        "type": "oneshot",
        "subtype": "ml-llm",
        "count": 500_000,
    }
    response = post(gateway, "estimate/oneshot", body)
    assert response.json() == {
        "message": "Cost estimation for oneshot job",
        "data": {"cost": "5.00"},
    }
    now = timezone.now()
    discount = post(
        gateway,
        "discount",
        {
            "vlab_id": str(cast.lab.uuid),
            "discount": "0.2",
            "valid_from": (now - timedelta(minutes=1)).isoformat(),
        },
    )
    assert discount.status_code == 201
    assert discount.json()["data"]["discount"] == "0.2"
    counted = post(gateway, "estimate/oneshot", body | {"count": "1000000"})  # as the SDK sends it
    assert counted.json()["data"] == {"cost": "8.00"}


def test_estimate_errors(gateway, cast):
    body = {"proj_id": str(cast.alpha.uuid), "type": "oneshot", "subtype": "ml-llm", "count": 5}
    missing = post(gateway, "estimate/oneshot", body)
    assert missing.status_code == 404
    assert missing.json()["message"].startswith("Missing price for: ")
    assert (
        post(gateway, "estimate/oneshot", body | {"proj_id": str(uuid.uuid4())}).json()["message"]
        == "Project not found"
    )
    assert post(gateway, "estimate/oneshot", body | {"count": "ten"}).status_code == 422
    assert post(gateway, "estimate/oneshot", body | {"count": -1}).status_code == 422
    assert post(gateway, "estimate/oneshot", body | {"type": "longrun"}).status_code == 422


def test_discounts_listed_newest_first_and_current(gateway, cast):
    lab = str(cast.lab.uuid)
    now = timezone.now()
    for days, value in [(5, "0.1"), (2, "0.3")]:
        post(
            gateway,
            "discount",
            {
                "vlab_id": lab,
                "discount": value,
                "valid_from": (now - timedelta(days=days)).isoformat(),
            },
        )
    listed = gateway.get(f"/api/accounting/discount/virtual-lab/{lab}").json()
    assert [d["discount"] for d in listed["data"]] == ["0.3", "0.1"]
    current = gateway.get(f"/api/accounting/discount/virtual-lab/{lab}/current").json()
    assert current["data"]["discount"] == "0.3"
    other = str(cast.charlie_lab.uuid)
    assert gateway.get(f"/api/accounting/discount/virtual-lab/{uuid.uuid4()}").json()["data"] == []
    none = gateway.get(f"/api/accounting/discount/virtual-lab/{other}/current")
    assert none.status_code == 404
    assert none.json()["message"] == "No current discount found for the virtual lab"
    assert (
        post(
            gateway, "discount", {"vlab_id": lab, "discount": "1.5", "valid_from": now.isoformat()}
        ).status_code
        == 422
    )
    assert Discount.objects.count() == 2


def test_outsider_token_cannot_price_or_see_another_labs_discounts(token_client, gateway, cast):
    post(
        gateway,
        "discount",
        {
            "vlab_id": str(cast.lab.uuid),
            "discount": "0.5",
            "valid_from": timezone.now().isoformat(),
        },
    )
    charlie = token_client(["accounting"], lab=cast.charlie_lab)
    assert post(charlie, "price", LLM_PRICE).status_code == 403
    assert charlie.get(f"/api/accounting/discount/virtual-lab/{cast.lab.uuid}").json()["data"] == []
    assert (
        charlie.get(f"/api/accounting/discount/virtual-lab/{cast.lab.uuid}/current").status_code
        == 404
    )
    estimate = {"proj_id": str(cast.alpha.uuid), "type": "oneshot", "subtype": "ml-llm", "count": 5}
    assert post(charlie, "estimate/oneshot", estimate).status_code == 404
    assert Decimal(Discount.objects.get().discount) == Decimal("0.5")
