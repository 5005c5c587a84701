"""The key management API: POST/GET /api/v1/keys, GET/DELETE /api/v1/keys/{id}, for service
tokens with the `keys` scope; lab-bound tokens see their lab's keys only (PATCH:
tests/keys/test_key_edit.py)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import yaml
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Scope, ServiceToken
from accounts.services import service_token_create
from keys import management_api
from keys.models import ApiKey, KeyLimit
from keys.services import key_rotate
from tests.billing.test_concurrency import run_threads
from tests.keys.conftest import authorize
from tests.metering.test_reservations import priced_service

pytestmark = pytest.mark.django_db

SETTINGS_FIELDS = {
    "id", "name", "project", "lab", "prefix", "masked", "status", "services", "limits",
    "credit_limit", "credit_limit_period", "credit_used", "expires_at", "created_at",
    "last_used_at", "rotated_at", "revoked_at",
}  # fmt: skip


@pytest.fixture
def keys_token(token_client, cast):
    """A keys-scoped token bound to Alice Lab."""
    return token_client([Scope.KEYS], lab=cast.lab)


@pytest.fixture
def charlie_token(token_client, cast):
    return token_client([Scope.KEYS], lab=cast.charlie_lab)


@pytest.fixture
def operator_token(token_client):
    return token_client([Scope.KEYS])


def create(client, headers=None, **body):
    return client.post("/api/v1/keys", body, format="json", headers=headers or {})


def assert_nothing_written():
    assert ApiKey.objects.count() == 0
    assert KeyLimit.objects.count() == 0


def assert_no_secret(response, *keys):
    """Neither a full key, its secret part nor a stored hash is in the answer."""
    text = response.content.decode()
    for full in keys:
        assert full not in text
        assert full.split("_", 2)[2] not in text
    for key in ApiKey.objects.all():
        assert key.secret_hash not in text
        if key.previous_secret_hash:
            assert key.previous_secret_hash not in text


# Create ------------------------------------------------------------------------------------


def test_it_creates_a_key_and_shows_it_once(cast, llm, keys_token, gateway):
    response = create(keys_token, project=str(cast.alpha.uuid), name="  user 42  ")
    body = response.json()
    assert response.status_code == 201, body
    assert set(body) == SETTINGS_FIELDS | {"key", "replayed"}
    key = ApiKey.objects.get()
    assert body["id"] == str(key.uuid)
    assert body["name"] == "user 42"
    assert body["project"] == str(cast.alpha.uuid) and body["lab"] == str(cast.lab.uuid)
    assert body["key"].startswith(f"sk_{key.lookup_id}_")
    assert body["prefix"] == f"sk_{key.lookup_id}"
    assert body["replayed"] is False and body["status"] == "active"
    assert body["services"] is None and body["limits"] == {}
    assert body["credit_limit"] is None and body["credit_limit_period"] is None
    assert body["credit_used"] == "0"
    assert body["revoked_at"] is None and body["last_used_at"] is None
    # Created by the token, not a person; only a hash of the secret is stored.
    assert key.created_by is None
    assert key.created_by_token == ServiceToken.objects.get(scopes=[Scope.KEYS])
    secret = body["key"].split("_", 2)[2]
    assert secret not in key.secret_hash
    # The key works at once.
    assert authorize(gateway, body["key"], units=10).status_code == 200


def test_it_creates_a_key_with_every_setting(cast, llm, keys_token):
    llm.key_requests_per_minute, llm.key_units_per_minute = 600, 100_000
    llm.save()
    expires = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    response = create(
        keys_token,
        project=str(cast.alpha.uuid),
        name="limited",
        services=["ml-llm"],
        limits={
            "ml-llm": {"requests_per_minute": 60, "units_per_minute": None},
            "*": {"units_per_minute": 5000},
        },
        credit_limit="12.50",
        credit_limit_period="monthly",
        expires_at=expires.isoformat(),
    )
    body = response.json()
    assert response.status_code == 201, body
    assert body["services"] == ["ml-llm"]
    assert body["limits"] == {
        "*": {"requests_per_minute": None, "units_per_minute": 5000},
        "ml-llm": {"requests_per_minute": 60, "units_per_minute": None},
    }
    assert Decimal(body["credit_limit"]) == Decimal("12.50")
    assert body["credit_limit_period"] == "monthly"
    key = ApiKey.objects.get()
    assert key.expires_at == expires
    assert key.credit_limit == Decimal("12.5") and key.credit_limit_period == "monthly"
    assert KeyLimit.objects.filter(key=key).count() == 2


def test_limits_looser_than_the_service_default_are_refused(cast, llm, keys_token):
    llm.key_requests_per_minute = 100
    llm.save()

    def create_limited(requests_per_minute):
        limits = {"ml-llm": {"requests_per_minute": requests_per_minute}}
        return create(keys_token, project=str(cast.alpha.uuid), name="k", limits=limits)

    response = create_limited(101)
    assert response.status_code == 400
    body = response.json()
    assert body["error_code"] == "INVALID_REQUEST"
    assert "limits.ml-llm.requests_per_minute" in body["details"]
    assert_nothing_written()
    # At the default itself it is fine.
    assert create_limited(100).status_code == 201


FUTURE = "2999-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "color": "red"}, "color"),
        ({"name": "x", "project": "not-a-uuid"}, "project"),
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": 5, "services": "ml-llm"}, "services"),
        ({"name": "x", "services": []}, "services"),
        ({"name": "x", "services": ["nope"]}, "services"),
        ({"name": "x", "services": ["not a slug"]}, "services"),
        ({"name": "x", "limits": []}, "limits"),
        ({"name": "x", "limits": {"nope": {"requests_per_minute": 1}}}, "limits.nope"),
        ({"name": "x", "limits": {"a\x00": {"requests_per_minute": 1}}}, "limits"),
        ({"name": "x", "limits": {"ml-llm": 5}}, "limits.ml-llm"),
        ({"name": "x", "limits": {"ml-llm": {"rpm": 5}}}, "limits.ml-llm"),
        (
            {"name": "x", "limits": {"*": {"requests_per_minute": 0}}},
            "limits.*.requests_per_minute",
        ),
        (
            {"name": "x", "limits": {"*": {"requests_per_minute": -1}}},
            "limits.*.requests_per_minute",
        ),
        (
            {"name": "x", "limits": {"*": {"requests_per_minute": True}}},
            "limits.*.requests_per_minute",
        ),
        (
            {"name": "x", "limits": {"*": {"requests_per_minute": "5"}}},
            "limits.*.requests_per_minute",
        ),
        (
            {"name": "x", "limits": {"*": {"requests_per_minute": 1.5}}},
            "limits.*.requests_per_minute",
        ),
        ({"name": "x", "limits": {"*": {"units_per_minute": 10**20}}}, "limits.*.units_per_minute"),
        (
            {"name": "x", "services": ["ml-llm"], "limits": {"other": {"requests_per_minute": 1}}},
            "limits.other",
        ),
        ({"name": "x", "credit_limit": "-1"}, "credit_limit"),
        ({"name": "x", "credit_limit": "0.0000001"}, "credit_limit"),
        ({"name": "x", "credit_limit": "lots"}, "credit_limit"),
        ({"name": "x", "credit_limit": "1e20"}, "credit_limit"),
        ({"name": "x", "credit_limit": True}, "credit_limit"),
        (
            {"name": "x", "credit_limit_period": "hourly", "credit_limit": "1"},
            "credit_limit_period",
        ),
        ({"name": "x", "credit_limit_period": "daily"}, "credit_limit_period"),
        ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "expires_at": "next tuesday"}, "expires_at"),
        ({"name": "x", "expires_at": 12}, "expires_at"),
    ],
)
def test_bad_input_is_400_and_writes_nothing(cast, llm, keys_token, body, field):
    body = {"project": str(cast.alpha.uuid), **body}
    response = keys_token.post("/api/v1/keys", body, format="json")
    assert response.status_code == 400, response.content
    payload = response.json()
    assert payload["error_code"] == "INVALID_REQUEST"
    assert field in payload["details"], payload
    assert_nothing_written()


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b"{not json",
        b'{"project": "00000000-0000-0000-0000-000000000000", "name": "\\ud800"}',
    ],
)
def test_unreadable_bodies_are_400(llm, keys_token, raw):
    response = keys_token.generic("POST", "/api/v1/keys", raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_REQUEST"
    assert_nothing_written()


def test_a_project_the_token_cannot_see_is_404(cast, llm, charlie_token):
    response = create(charlie_token, project=str(cast.alpha.uuid), name="sneaky")
    assert response.status_code == 404
    assert response.json()["error_code"] == "ENTITY_NOT_FOUND"
    response = create(charlie_token, project=str(uuid.uuid4()), name="nowhere")
    assert response.status_code == 404
    assert_nothing_written()


def test_an_operator_token_creates_keys_in_any_lab(cast, llm, operator_token):
    charlie_project = cast.charlie_lab.projects.get()
    for project in (cast.alpha, charlie_project):
        assert create(operator_token, project=str(project.uuid), name="k").status_code == 201
    assert ApiKey.objects.count() == 2


@pytest.mark.parametrize("scopes", [[Scope.AUTHORIZE, Scope.USAGE, Scope.LABS], [Scope.LABS]])
def test_a_token_without_the_keys_scope_is_403(cast, llm, token_client, scopes):
    client = token_client(scopes, lab=cast.lab)
    assert create(client, project=str(cast.alpha.uuid), name="k").status_code == 403
    assert client.get("/api/v1/keys").status_code == 403
    assert_nothing_written()


def test_no_token_or_an_end_user_key_is_401(cast, llm, api_client, make_key):
    key, full = make_key()
    assert create(api_client, project=str(cast.alpha.uuid), name="k").status_code == 401
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {full}")
    for response in (
        create(api_client, project=str(cast.alpha.uuid), name="k"),
        api_client.get("/api/v1/keys"),
        api_client.get(f"/api/v1/keys/{key.uuid}"),
        api_client.delete(f"/api/v1/keys/{key.uuid}"),
    ):
        assert response.status_code == 401
        assert response.json()["error_code"] == "UNAUTHORIZED"
    key.refresh_from_db()
    assert key.revoked_at is None and ApiKey.objects.count() == 1


# Idempotency-Key ---------------------------------------------------------------------------


def test_a_replay_answers_the_first_key_without_its_secret(cast, llm, keys_token):
    body = {"project": str(cast.alpha.uuid), "name": "once", "credit_limit": "5"}
    first = create(keys_token, headers={"Idempotency-Key": "req-1"}, **body)
    assert first.status_code == 201 and first.json()["key"].startswith("sk_")
    assert first.headers.get("Idempotent-Replayed") is None
    again = create(keys_token, headers={"Idempotency-Key": "req-1"}, **body)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    replay = again.json()
    assert replay["id"] == first.json()["id"]
    assert replay["key"] is None and replay["replayed"] is True
    assert_no_secret(again, first.json()["key"])
    assert ApiKey.objects.count() == 1


def test_an_equivalent_body_is_a_replay(cast, llm, keys_token):
    priced_service("ml-embed")
    headers = {"Idempotency-Key": "req-2"}
    base = {"project": str(cast.alpha.uuid), "name": "k", "credit_limit_period": "daily"}
    create(keys_token, headers, services=["ml-llm", "ml-embed"], credit_limit="5", **base)
    again = create(keys_token, headers, services=["ml-embed", "ml-llm"], credit_limit=5.0, **base)
    assert again.status_code == 201 and again.json()["replayed"] is True
    assert ApiKey.objects.count() == 1


def test_the_same_idempotency_key_with_another_body_is_409(cast, llm, keys_token):
    headers = {"Idempotency-Key": "req-3"}
    assert create(keys_token, headers, project=str(cast.alpha.uuid), name="a").status_code == 201
    response = create(keys_token, headers, project=str(cast.alpha.uuid), name="b")
    assert response.status_code == 409
    assert response.json()["error_code"] == "IDEMPOTENCY_CONFLICT"
    assert list(ApiKey.objects.values_list("name", flat=True)) == ["a"]


def test_idempotency_keys_are_scoped_by_token(cast, llm, keys_token, token_client):
    other = token_client([Scope.KEYS], lab=cast.lab)
    headers = {"Idempotency-Key": "shared"}
    first = create(keys_token, headers, project=str(cast.alpha.uuid), name="a")
    second = create(other, headers, project=str(cast.alpha.uuid), name="a")
    assert first.status_code == second.status_code == 201
    assert second.json()["replayed"] is False and second.json()["key"].startswith("sk_")
    assert first.json()["id"] != second.json()["id"]


def test_a_failed_request_leaves_its_idempotency_key_unused(cast, llm, keys_token):
    headers = {"Idempotency-Key": "retry-me"}
    body = {"project": str(cast.alpha.uuid), "name": "k", "credit_limit": "-1"}
    assert create(keys_token, headers, **body).status_code == 400
    body["credit_limit"] = "1"
    assert create(keys_token, headers, **body).status_code == 201
    assert ApiKey.objects.get().idempotency_key == "retry-me"


@pytest.mark.parametrize("value", ["x" * 201, "tab\there"])
def test_a_bad_idempotency_key_is_400(cast, llm, keys_token, value):
    response = create(
        keys_token, {"Idempotency-Key": value}, project=str(cast.alpha.uuid), name="k"
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["details"]
    assert_nothing_written()


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_idempotency_key_create_one_key(cast, llm):
    _token, plain = service_token_create(name="platform", scopes=[Scope.KEYS], lab=cast.lab)
    body = {"project": str(cast.alpha.uuid), "name": "racy"}
    answers = []

    def work(_index):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {plain}")
        answers.append(create(client, {"Idempotency-Key": "race"}, **body))

    assert run_threads(8, work) == []
    assert [a.status_code for a in answers] == [201] * 8
    assert ApiKey.objects.count() == 1
    assert {a.json()["id"] for a in answers} == {str(ApiKey.objects.get().uuid)}
    assert sum(a.json()["key"] is not None for a in answers) == 1


# List --------------------------------------------------------------------------------------


def test_it_lists_the_labs_keys_newest_first_without_secrets(cast, llm, keys_token, make_key):
    _, one = make_key(name="one")
    _, two = make_key(project=cast.beta, name="two")
    rotated, three = make_key(name="three")
    _, three = key_rotate(key=rotated)
    response = keys_token.get("/api/v1/keys")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert [k["name"] for k in body["results"]] == ["three", "two", "one"]
    assert set(body["results"][0]) == SETTINGS_FIELDS
    assert_no_secret(response, one, two, three)


def test_it_filters_by_project(cast, llm, keys_token, make_key):
    make_key(name="alpha key")
    make_key(project=cast.beta, name="beta key")
    response = keys_token.get(f"/api/v1/keys?project={cast.beta.uuid}")
    assert [k["name"] for k in response.json()["results"]] == ["beta key"]


def test_a_bad_or_invisible_project_filter_is_refused(cast, llm, keys_token, charlie_token):
    assert keys_token.get("/api/v1/keys?project=nope").status_code == 400
    response = charlie_token.get(f"/api/v1/keys?project={cast.alpha.uuid}")
    assert response.status_code == 404
    assert response.json()["error_code"] == "ENTITY_NOT_FOUND"


def test_the_outsider_lists_only_his_own_keys(cast, llm, charlie_token, make_key):
    make_key(name="alice's")
    make_key(project=cast.charlie_lab.projects.get(), name="charlie's", created_by=cast.charlie)
    names = [k["name"] for k in charlie_token.get("/api/v1/keys").json()["results"]]
    assert names == ["charlie's"]


def test_an_operator_token_lists_every_labs_keys(cast, llm, operator_token, make_key):
    make_key(name="alice's")
    make_key(project=cast.charlie_lab.projects.get(), name="charlie's", created_by=cast.charlie)
    assert operator_token.get("/api/v1/keys").json()["count"] == 2


def test_the_list_is_bounded(cast, llm, keys_token, make_key, monkeypatch):
    monkeypatch.setattr(management_api.KeyPagination, "max_limit", 2)
    for index in range(3):
        make_key(name=f"k{index}")
    body = keys_token.get("/api/v1/keys?limit=1000").json()
    assert body["count"] == 3 and len(body["results"]) == 2
    body = keys_token.get("/api/v1/keys?limit=1&offset=1").json()
    assert [k["name"] for k in body["results"]] == ["k1"]
    assert management_api.LIST_MAX == 500


# One key, and revoking it ------------------------------------------------------------------


def test_it_gets_one_key_without_its_secret(cast, llm, keys_token, make_key):
    key, full = make_key(credit_limit="2", credit_limit_period="daily")
    response = keys_token.get(f"/api/v1/keys/{key.uuid}")
    assert response.status_code == 200
    assert response.json()["id"] == str(key.uuid)
    assert response.json()["credit_limit_period"] == "daily"
    assert_no_secret(response, full)


@pytest.mark.parametrize("key_id", ["nope", str(uuid.uuid4()), "0" * 40])
def test_an_unknown_key_is_404_in_the_error_shape(llm, keys_token, key_id):
    for response in (
        keys_token.get(f"/api/v1/keys/{key_id}"),
        keys_token.delete(f"/api/v1/keys/{key_id}"),
    ):
        assert response.status_code == 404
        assert response.json()["error_code"] == "ENTITY_NOT_FOUND"


def test_the_credit_used_is_that_of_the_current_period(cast, llm, keys_token, make_key, gateway):
    key, full = make_key(credit_limit="10", credit_limit_period="daily")
    assert authorize(gateway, full, units=150).status_code == 200  # holds 1.50
    assert keys_token.get(f"/api/v1/keys/{key.uuid}").json()["credit_used"] == "1.500000"
    ApiKey.objects.filter(pk=key.pk).update(credit_period_start=timezone.now() - timedelta(days=3))
    assert keys_token.get(f"/api/v1/keys/{key.uuid}").json()["credit_used"] == "0"


def test_delete_revokes_and_is_idempotent(cast, llm, keys_token, make_key, gateway):
    key, full = make_key()
    response = keys_token.delete(f"/api/v1/keys/{key.uuid}")
    assert response.status_code == 200
    body = response.json()
    assert body["revoked_at"] is not None and body["status"] == "revoked"
    assert_no_secret(response, full)
    assert authorize(gateway, full).json()["code"] == "key_revoked"
    again = keys_token.delete(f"/api/v1/keys/{key.uuid}")
    assert again.status_code == 200 and again.json()["revoked_at"] == body["revoked_at"]


def test_the_outsider_cannot_see_or_revoke_alices_key(cast, llm, charlie_token, make_key, gateway):
    key, full = make_key()
    assert charlie_token.get(f"/api/v1/keys/{key.uuid}").status_code == 404
    response = charlie_token.delete(f"/api/v1/keys/{key.uuid}")
    assert response.status_code == 404
    assert response.json()["error_code"] == "ENTITY_NOT_FOUND"
    key.refresh_from_db()
    assert key.revoked_at is None
    assert authorize(gateway, full).status_code == 200


def test_an_operator_token_revokes_any_labs_key(cast, llm, operator_token, make_key):
    key, _ = make_key()
    assert operator_token.delete(f"/api/v1/keys/{key.uuid}").status_code == 200
    key.refresh_from_db()
    assert key.revoked_at is not None


# OpenAPI -----------------------------------------------------------------------------------


def test_the_schema_describes_the_key_routes(tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--file", str(target))
    schema = yaml.safe_load(target.read_text())
    paths = schema["paths"]
    assert set(paths["/api/v1/keys"]) == {"get", "post"}
    assert set(paths["/api/v1/keys/{key_id}"]) == {"get", "patch", "delete"}
    assert paths["/api/v1/keys"]["post"]["security"] == [{"serviceToken": []}]
    assert paths["/api/v1/key"]["get"]["security"] == [{"endUserKey": []}]
    created = schema["components"]["schemas"]["KeyCreatedOut"]["properties"]
    assert {"id", "key", "replayed", "limits", "credit_used"} <= set(created)
