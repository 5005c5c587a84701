"""GET /api/v1/key: the end user's own key, as a bearer token, sees its limits, usage, credit cap,
the project's credits and what they buy."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.services import service_token_create
from keys.models import ApiKey
from keys.self_api import units_affordable
from keys.services import key_revoke, key_rotate
from metering.cost import Tier
from metering.models import Service, ServiceType
from metering.services import discount_create
from tests.keys.conftest import authorize
from tests.metering.test_reservations import priced_service

pytestmark = pytest.mark.django_db


def me(api_client, full_key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {full_key}")
    return api_client.get("/api/v1/key")


def by_slug(body):
    return {service["service"]: service for service in body["services"]}


def test_it_describes_the_key(cast, llm, api_client, make_key):
    key, full = make_key(name="mine")
    response = me(api_client, full)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == str(key.uuid) and body["name"] == "mine"
    assert body["prefix"] == f"sk_{key.lookup_id}"
    assert body["all_services"] is True
    assert body["project"] == {"id": str(cast.alpha.uuid), "available": "100.000000"}
    assert body["credit_limit"] is None
    assert body["limits"] == {"requests_per_minute": None, "units_per_minute": None}
    zero = {"requests": 0, "units": 0, "charged": "0.000000"}
    assert body["usage"] == {"today": zero, "this_month": zero}
    llm_row = by_slug(body)["ml-llm"]
    assert llm_row["priced"] is True and llm_row["unit"] == "unit"
    assert llm_row["units_affordable"] == 10_000  # 100 credits at 0.01
    assert full not in response.content.decode()
    assert key.secret_hash not in response.content.decode()


def test_limits_in_force_are_the_keys_own_where_tighter(cast, llm, api_client, make_key):
    llm.key_requests_per_minute, llm.key_units_per_minute = 100, 1000
    llm.save()
    priced_service("ml-embed")
    _, full = make_key(
        limits={"ml-llm": {"requests_per_minute": 10}, "*": {"units_per_minute": 500}}
    )
    body = me(api_client, full).json()
    assert body["limits"] == {"requests_per_minute": None, "units_per_minute": 500}
    services = by_slug(body)
    assert services["ml-llm"]["limits"] == {"requests_per_minute": 10, "units_per_minute": 1000}
    assert services["ml-embed"]["limits"] == {
        "requests_per_minute": None,
        "units_per_minute": None,
    }
    # A default lowered later wins over the key's own.
    llm.key_requests_per_minute = 5
    llm.save()
    services = by_slug(me(api_client, full).json())
    assert services["ml-llm"]["limits"]["requests_per_minute"] == 5


def test_only_allowed_and_authorizable_services_are_listed(cast, llm, api_client, make_key):
    priced_service("ml-embed")
    priced_service("sim-long", kind=ServiceType.LONGRUN)
    retired = priced_service("old")
    retired.is_active = False
    retired.save()
    _, everything = make_key()
    assert set(by_slug(me(api_client, everything).json())) == {"ml-llm", "ml-embed"}
    _, only_llm = make_key(services=["ml-llm"])
    body = me(api_client, only_llm).json()
    assert body["all_services"] is False
    assert set(by_slug(body)) == {"ml-llm"}


def test_usage_today_and_this_month(cast, llm, api_client, make_key, gateway):
    _, full = make_key()
    job = authorize(gateway, full, units=250).json()["job_id"]
    settled = gateway.post("/api/v1/usage", {"job_id": job, "units": 200}, format="json")
    assert settled.status_code == 200, settled.content
    assert authorize(gateway, full, units=5).status_code == 200  # open, not yet settled
    usage = me(api_client, full).json()["usage"]
    expected = {"requests": 2, "units": 200, "charged": "2.000000"}
    assert usage == {"today": expected, "this_month": expected}


def test_the_credit_cap_and_what_it_buys(cast, llm, api_client, make_key, gateway):
    _, full = make_key(credit_limit="1.00", credit_limit_period="daily")
    assert authorize(gateway, full, units=50).status_code == 200  # holds 0.50
    body = me(api_client, full).json()
    cap = body["credit_limit"]
    assert cap["limit"] == "1.000000" and cap["period"] == "daily"
    assert (cap["used"], cap["remaining"]) == ("0.500000", "0.500000")
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    assert cap["period_start"] == start.isoformat().replace("+00:00", "Z")
    assert cap["resets_at"] == (start + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert body["project"]["available"] == "99.500000"
    # The smaller of the cap's 0.50 and the project's 99.50, at 0.01 a unit.
    assert by_slug(body)["ml-llm"]["units_affordable"] == 50


def test_the_project_bounds_what_a_large_cap_buys(cast, llm, api_client, make_key):
    _, full = make_key(credit_limit="500")
    body = me(api_client, full).json()
    assert body["credit_limit"]["period"] is None and body["credit_limit"]["resets_at"] is None
    assert by_slug(body)["ml-llm"]["units_affordable"] == 10_000


def test_units_are_inverted_through_tiers_and_the_labs_discount(cast, llm, api_client, make_key):
    priced_service(
        "sim",
        tiers=[
            Tier(0, 100, Decimal(2), Decimal("0.1")),
            Tier(100, None, Decimal(0), Decimal("0.01")),
        ],
    )
    discount_create(
        lab=cast.lab, discount=Decimal("0.5"), valid_from=timezone.now() - timedelta(days=1)
    )
    _, full = make_key(credit_limit="7")
    # cost(n > 100) = (2 + 10 + 0.01 (n - 100)) / 2 <= 7  <=>  n <= 300
    assert by_slug(me(api_client, full).json())["sim"]["units_affordable"] == 300


def test_units_affordable_at_the_edges():
    tiers = [Tier(0, None, Decimal(1), Decimal("0.5"))]
    assert units_affordable(tiers, Decimal(0), Decimal("0.99")) == 0  # the fixed cost alone
    assert units_affordable(tiers, Decimal(0), Decimal("1.5")) == 1
    assert units_affordable(tiers, Decimal(0), Decimal("-3")) == 0  # a project in debt
    free = [Tier(0, None, Decimal(0), Decimal(0))]
    assert units_affordable(free, Decimal(0), Decimal(0)) is None
    assert units_affordable(tiers, Decimal(1), Decimal(0)) is None  # a 100% discount
    tiny = [Tier(0, None, Decimal(0), Decimal("0.000001"))]
    assert units_affordable(tiny, Decimal(0), Decimal(10) ** 11) == 10**15  # the most a call takes


def test_unpriced_and_free_services(cast, llm, api_client, make_key):
    Service.objects.create(slug="unpriced", type=ServiceType.ONESHOT, name="u", unit_label="u")
    priced_service("free", tiers=[Tier(0, None, Decimal(0), Decimal(0))])
    _, full = make_key()
    services = by_slug(me(api_client, full).json())
    assert (services["unpriced"]["priced"], services["unpriced"]["units_affordable"]) == (False, 0)
    assert (services["free"]["priced"], services["free"]["units_affordable"]) == (True, None)


def test_reading_it_is_not_a_use(cast, llm, api_client, make_key):
    key, full = make_key()
    assert me(api_client, full).status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is None


def test_the_previous_secret_works_only_during_its_grace(cast, llm, api_client, make_key):
    key, old = make_key()
    key, new = key_rotate(key=key)
    assert me(api_client, old).status_code == 200
    assert me(api_client, new).status_code == 200
    ApiKey.objects.filter(pk=key.pk).update(previous_valid_until=timezone.now())
    assert me(api_client, old).status_code == 401
    assert me(api_client, new).status_code == 200


def test_refusals_are_401_in_the_error_shape(cast, llm, api_client, make_key, token_client):
    revoked, revoked_full = make_key()
    key_revoke(key=revoked)
    expired, expired_full = make_key()
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    valid, valid_full = make_key()
    lookup_and_wrong_secret = f"sk_{valid.lookup_id}_{'A' * 43}"
    _token, service_token = service_token_create(name="gw", scopes=["keys"])
    cases = {
        revoked_full: "key_revoked",
        expired_full: "key_expired",
        lookup_and_wrong_secret: "key_invalid",
        "sk_nosuchkey_secret": "key_invalid",
        "sk_" + "a" * 40: "key_invalid",
        service_token: "key_invalid",
    }
    for raw, code in cases.items():
        response = me(api_client, raw)
        assert response.status_code == 401, raw
        body = response.json()
        assert body["error_code"] == "UNAUTHORIZED"
        assert body["details"] == {"code": code}, raw
        assert response["WWW-Authenticate"] == "Bearer"
    api_client.credentials()
    response = api_client.get("/api/v1/key")
    assert response.status_code == 401 and response.json()["error_code"] == "UNAUTHORIZED"
    api_client.credentials(HTTP_AUTHORIZATION=f"Basic {valid_full}")
    assert api_client.get("/api/v1/key").status_code == 401


def test_the_outsider_sees_only_his_own_key(cast, llm, api_client, make_key):
    alice_key, _ = make_key()
    charlie_project = cast.charlie_lab.projects.get()
    _, charlie_full = make_key(project=charlie_project, created_by=cast.charlie)
    response = me(api_client, charlie_full)
    body = response.json()
    assert body["project"] == {"id": str(charlie_project.uuid), "available": "0.000000"}
    assert by_slug(body)["ml-llm"]["units_affordable"] == 0
    text = response.content.decode()
    assert str(cast.alpha.uuid) not in text and str(alice_key.uuid) not in text
    # His key is no service token: it cannot read or revoke Alice's key.
    assert api_client.get(f"/api/v1/keys/{alice_key.uuid}").status_code == 401
    assert api_client.delete(f"/api/v1/keys/{alice_key.uuid}").status_code == 401
    alice_key.refresh_from_db()
    assert alice_key.revoked_at is None
