"""POST /api/v1/authorize: every decision code, its status, body and headers."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import Scope
from billing.selectors import project_balances
from keys.models import ApiKey, KeyJob
from keys.services import key_revoke, key_rotate
from metering.models import Job
from tests.keys.conftest import authorize
from tests.metering.test_reservations import priced_service

pytestmark = pytest.mark.django_db


def test_it_allows_and_holds_the_estimated_cost(cast, gateway, make_key):
    key, full = make_key()
    response = authorize(gateway, full, units=250)
    body = response.json()
    assert response.status_code == 200, body
    assert body["allowed"] is True and body["code"] == "allowed"
    assert body["project"] == str(cast.alpha.uuid)
    job = Job.objects.get(uuid=body["job_id"])
    assert job.reserved_amount == Decimal("2.50")
    assert KeyJob.objects.get(job=job).key == key
    balance = project_balances([cast.alpha])[0]
    assert (balance.balance, balance.reserved) == (Decimal("97.5"), Decimal("2.5"))
    assert set(body["limits"]) == {"requests", "units", "credits"}


def test_units_default_to_one(gateway, make_key):
    _, full = make_key()
    body = authorize(gateway, full).json()
    assert Job.objects.get(uuid=body["job_id"]).reserved_amount == Decimal("0.01")


@pytest.mark.parametrize(
    "body",
    [
        {"service": "ml-llm"},
        {"key": 12, "service": "ml-llm"},
        {"key": "sk_x_y"},
        {"key": "sk_x_y", "service": "ml-llm", "units": -1},
        {"key": "sk_x_y", "service": "ml-llm", "units": 1.5},
        {"key": "sk_x_y", "service": "ml-llm", "units": True},
        {"key": "sk_x_y", "service": "ml-llm", "units": "ten"},
        {"key": "sk_x_y", "service": "ml-llm", "units": 10**16},
        {"key": "sk_x_y", "service": "ml-llm", "extra": 1},
        {"key": "sk_x_y", "service": "not a slug!"},
        [],
    ],
)
def test_bad_input_is_400_in_the_decision_shape(gateway, make_key, body):
    response = gateway.post("/api/v1/authorize", body, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"
    assert response.json()["allowed"] is False
    assert Job.objects.count() == 0


def test_malformed_json_is_400(gateway):
    response = gateway.generic(
        "POST", "/api/v1/authorize", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"


def test_numeric_string_units_are_accepted(gateway, make_key):
    _, full = make_key()
    assert authorize(gateway, full, units="30").status_code == 200


@pytest.mark.parametrize(
    "key", ["sk_nope_secret", "nonsense", "sk_" + "a" * 12 + "_x\x00", "st_abc_def"]
)
def test_unknown_keys_are_401(gateway, make_key, key):
    make_key()
    response = authorize(gateway, key)
    assert response.status_code == 401
    assert response.json()["code"] == "key_invalid"


def test_a_wrong_secret_with_a_real_lookup_id_is_401(gateway, make_key):
    _, full = make_key()
    lookup = full.split("_")[1]
    response = authorize(gateway, f"sk_{lookup}_wrongsecret")
    assert response.status_code == 401
    assert response.json()["code"] == "key_invalid"


def test_a_revoked_key_is_refused_on_the_very_next_call(gateway, make_key):
    key, full = make_key()
    assert authorize(gateway, full).status_code == 200
    key_revoke(key=key)
    response = authorize(gateway, full)
    assert (response.status_code, response.json()["code"]) == (401, "key_revoked")


def test_an_expired_key_is_401(gateway, make_key, time_machine):
    _, full = make_key(expires_at=timezone.now() + timedelta(hours=1))
    assert authorize(gateway, full).status_code == 200
    time_machine.move_to(timezone.now() + timedelta(hours=2))
    response = authorize(gateway, full)
    assert (response.status_code, response.json()["code"]) == (401, "key_expired")


def test_unknown_and_not_allowed_services_are_403(gateway, make_key):
    priced_service("other-llm")
    _, full = make_key(services=["ml-llm"])
    response = authorize(gateway, full, service="no-such-service")
    assert (response.status_code, response.json()["code"]) == (403, "service_unknown")
    response = authorize(gateway, full, service="other-llm")
    assert (response.status_code, response.json()["code"]) == (403, "service_not_allowed")
    assert authorize(gateway, full, service="ml-llm").status_code == 200


def test_a_key_for_all_services_may_use_a_new_one(gateway, make_key):
    _, full = make_key()
    priced_service("newer-llm")
    assert authorize(gateway, full, service="newer-llm").status_code == 200


def test_project_credits_are_402_insufficient_funds(cast, gateway, make_key):
    _, full = make_key()
    response = authorize(gateway, full, units=10_001)  # 100.01 credits, Alpha has 100
    assert (response.status_code, response.json()["code"]) == (402, "insufficient_funds")
    assert Job.objects.count() == 0
    assert authorize(gateway, full, units=10_000).status_code == 200  # equality is enough


def test_the_key_cap_is_402_key_credit_limit(gateway, make_key):
    key, full = make_key(credit_limit="1.00")
    first = authorize(gateway, full, units=60)
    assert first.json()["limits"]["credits"] == {"limit": "1.000000", "remaining": "0.400000"}
    response = authorize(gateway, full, units=41)
    assert (response.status_code, response.json()["code"]) == (402, "key_credit_limit")
    assert response.json()["limits"]["credits"]["remaining"] == "0.400000"
    assert authorize(gateway, full, units=40).status_code == 200
    key.refresh_from_db()
    assert key.credit_used == Decimal("1.00")


def test_the_key_cap_is_named_when_both_cap_and_project_refuse(gateway, make_key):
    _, full = make_key(credit_limit="5")
    response = authorize(gateway, full, units=20_000)
    assert (response.status_code, response.json()["code"]) == (402, "key_credit_limit")


def test_requests_per_minute_gives_429_with_headers(gateway, make_key):
    _, full = make_key(limits={"ml-llm": {"requests_per_minute": 3}})
    for remaining in (2, 1, 0):
        response = authorize(gateway, full)
        assert response.status_code == 200
        assert response["X-RateLimit-Limit"] == "3"
        assert response["X-RateLimit-Remaining"] == str(remaining)
        assert 0 < int(response["X-RateLimit-Reset"]) <= 60
    response = authorize(gateway, full)
    assert (response.status_code, response.json()["code"]) == (429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response["X-RateLimit-Remaining"] == "0"
    assert response.json()["limits"]["requests"]["limit"] == 3
    assert Job.objects.count() == 3


def test_the_key_wide_limit_counts_every_service(gateway, make_key):
    priced_service("other-llm")
    _, full = make_key(limits={"*": {"requests_per_minute": 2}})
    assert authorize(gateway, full).status_code == 200
    assert authorize(gateway, full, service="other-llm").status_code == 200
    response = authorize(gateway, full, service="other-llm")
    assert (response.status_code, response.json()["code"]) == (429, "rate_limited")


def test_units_per_minute_gives_429(gateway, make_key):
    _, full = make_key(limits={"ml-llm": {"units_per_minute": 100}})
    assert authorize(gateway, full, units=80).status_code == 200
    response = authorize(gateway, full, units=30)
    assert (response.status_code, response.json()["code"]) == (429, "units_limited")
    assert response.json()["limits"]["units"]["remaining"] == 20
    assert authorize(gateway, full, units=20).status_code == 200


def test_an_estimate_above_the_unit_limit_itself_is_429_with_a_clear_message(gateway, make_key):
    _, full = make_key(limits={"ml-llm": {"units_per_minute": 100}})
    response = authorize(gateway, full, units=101)
    assert (response.status_code, response.json()["code"]) == (429, "units_limited")
    assert "more than the per-minute limit" in response.json()["message"]


def test_the_service_default_applies_to_keys_without_limits(gateway, make_key, llm):
    llm.key_requests_per_minute = 1
    llm.save()
    _, full = make_key()
    assert authorize(gateway, full).status_code == 200
    assert authorize(gateway, full).status_code == 429


def test_a_default_lowered_after_creation_still_wins(gateway, make_key, llm):
    _, full = make_key(limits={"ml-llm": {"requests_per_minute": 5}})
    llm.key_requests_per_minute = 1
    llm.save()
    assert authorize(gateway, full).status_code == 200
    assert authorize(gateway, full).status_code == 429


def test_a_request_refused_for_credits_does_not_count_against_the_rate(gateway, make_key):
    _, full = make_key(limits={"ml-llm": {"requests_per_minute": 1, "units_per_minute": 20_000}})
    assert authorize(gateway, full, units=10_001).status_code == 402
    response = authorize(gateway, full, units=5)
    assert response.status_code == 200
    assert response.json()["limits"]["units"]["remaining"] == 19_995


def test_the_service_token_needs_the_authorize_scope(token_client, make_key):
    _, full = make_key()
    response = authorize(token_client([Scope.USAGE]), full)
    assert (response.status_code, response.json()["code"]) == (403, "service_token_forbidden")


def test_a_missing_service_token_is_401_in_the_decision_shape(api_client, make_key):
    _, full = make_key()
    response = authorize(api_client, full)
    assert (response.status_code, response.json()["code"]) == (401, "service_token_invalid")
    assert response.json()["allowed"] is False


def test_a_lab_token_cannot_use_another_labs_keys(cast, token_client, make_key):
    _, full = make_key()
    outsider = token_client([Scope.AUTHORIZE], lab=cast.charlie_lab)
    response = authorize(outsider, full)
    assert (response.status_code, response.json()["code"]) == (401, "key_invalid")
    own = token_client([Scope.AUTHORIZE], lab=cast.lab)
    assert authorize(own, full).status_code == 200


def test_after_rotation_both_secrets_work_until_the_grace_ends(
    gateway, make_key, settings, time_machine
):
    settings.API_KEY_ROTATION_GRACE_SECONDS = 600
    key, old = make_key()
    key, new = key_rotate(key=key)
    assert new != old and new.split("_")[1] == old.split("_")[1]
    assert authorize(gateway, old).status_code == 200
    assert authorize(gateway, new).status_code == 200
    time_machine.move_to(timezone.now() + timedelta(seconds=601))
    assert authorize(gateway, old).json()["code"] == "key_invalid"
    assert authorize(gateway, new).status_code == 200


def test_last_used_is_recorded(gateway, make_key):
    key, full = make_key()
    assert key.last_used_at is None
    authorize(gateway, full)
    assert ApiKey.objects.get(pk=key.pk).last_used_at is not None
