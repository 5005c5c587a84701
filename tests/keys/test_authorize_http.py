"""POST /api/v1/authorize answers without DRF's request machinery (keys.api.AuthorizeView
.dispatch): the edges of the token, the body and the method, as DRF answered them."""

from __future__ import annotations

import pytest

from metering.models import Job
from tests.keys.conftest import authorize

pytestmark = pytest.mark.django_db


def test_an_allowed_answer_is_compact_json_with_the_rate_headers(gateway, make_key):
    _, full = make_key(limits={"ml-llm": {"requests_per_minute": 5, "units_per_minute": None}})
    response = authorize(gateway, full)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.content.startswith(b'{"allowed":true,"code":"allowed"')
    assert (response["X-RateLimit-Limit"], response["X-RateLimit-Remaining"]) == ("5", "4")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "Authentication credentials were not provided."),
        ("Basic abc", "Authentication credentials were not provided."),
        ("Bearer st_a_b c", "Malformed Authorization header."),
        ("Bearer st_nope_nope", "Invalid or revoked service token."),
    ],
)
def test_a_refused_service_token_is_401_with_www_authenticate(api_client, header, message):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = api_client.post(
        "/api/v1/authorize", {"key": "sk_a_b", "service": "ml-llm"}, format="json", **extra
    )
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    body = response.json()
    assert (body["allowed"], body["code"], body["message"]) == (
        False,
        "service_token_invalid",
        message,
    )


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        ('{"key": "sk_a_b", "service": "ml-llm"}', "text/plain"),
        ('{"key": "sk_a_b", "service": "ml-llm", "units": NaN}', "application/json"),
        ("\xff", "application/json"),
        ("", "application/json"),
    ],
)
def test_a_body_that_is_not_a_json_request_is_400(gateway, content, content_type):
    response = gateway.generic("POST", "/api/v1/authorize", content, content_type=content_type)
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"
    assert Job.objects.count() == 0


def test_a_charset_in_the_content_type_is_fine(gateway, make_key):
    _, full = make_key()
    response = gateway.generic(
        "POST",
        "/api/v1/authorize",
        f'{{"key": "{full}", "service": "ml-llm"}}',
        content_type="application/json; charset=utf-8",
    )
    assert response.status_code == 200, response.content


def test_other_methods_are_405_in_the_decision_shape(gateway):
    response = gateway.get("/api/v1/authorize")
    assert response.status_code == 405
    assert response.json()["allowed"] is False


def test_a_failing_recharge_trigger_does_not_fail_an_allowed_decision(
    gateway, make_key, monkeypatch
):
    from billing import recharge_trigger

    def unreadable():
        raise RuntimeError("the auto-recharge targets could not be read")

    monkeypatch.setattr(recharge_trigger, "_targets_now", unreadable)
    _, full = make_key()
    response = authorize(gateway, full)
    assert response.status_code == 200
    assert Job.objects.filter(uuid=response.json()["job_id"]).exists()


# The token and the key are read in one statement (keys.authorize.token_and_key_read): the token
# is still checked first, from its own columns.


def _with_token(scopes, **kwargs):
    from rest_framework.test import APIClient

    from accounts.services import service_token_create

    token, plain = service_token_create(name="gateway", scopes=scopes, **kwargs)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plain}")
    return token, plain, client


@pytest.mark.parametrize("mangle", ["wrong secret", "unknown lookup", "revoked"])
def test_a_refused_token_with_a_good_key_is_401_and_holds_nothing(make_key, mangle):
    from accounts.models import Scope

    token, plain, client = _with_token([Scope.AUTHORIZE])
    if mangle == "wrong secret":
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {plain[:-2]}xx")
    elif mangle == "unknown lookup":
        client.credentials(HTTP_AUTHORIZATION="Bearer st_nosuchlookup_" + plain.split("_")[-1])
    else:
        from django.utils import timezone

        token.revoked_at = timezone.now()
        token.save()
    _, full = make_key()
    response = authorize(client, full)
    assert (response.status_code, response.json()["code"]) == (401, "service_token_invalid")
    assert Job.objects.count() == 0


def test_a_token_without_the_scope_and_a_good_key_is_403(make_key):
    from accounts.models import Scope

    _, _, client = _with_token([Scope.USAGE])
    _, full = make_key()
    response = authorize(client, full)
    assert (response.status_code, response.json()["code"]) == (403, "service_token_forbidden")
    assert Job.objects.count() == 0


def test_a_refused_token_answers_before_a_bad_body(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Bearer st_nope_nope")
    response = api_client.post("/api/v1/authorize", {"service": "ml-llm"}, format="json")
    assert (response.status_code, response.json()["code"]) == (401, "service_token_invalid")
    response = api_client.generic(
        "POST", "/api/v1/authorize", "{not json", content_type="application/json"
    )
    assert response.status_code == 401


def test_the_tokens_last_use_is_recorded(make_key):
    from accounts.models import Scope, ServiceToken

    token, _, client = _with_token([Scope.AUTHORIZE])
    _, full = make_key()
    assert authorize(client, full).status_code == 200
    assert ServiceToken.objects.get(pk=token.pk).last_used_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_failed_query_of_the_recharge_trigger_keeps_an_idempotent_hold(
    gateway, make_key, monkeypatch
):
    """With an Idempotency-Key the hold commits with the key's record, after the trigger ran:
    a query that failed in the trigger must not abort that transaction under an allowed."""
    from django.db import connection

    from billing import recharge_trigger
    from keys.models import KeyJob

    def failing_query():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1/0")

    monkeypatch.setattr(recharge_trigger, "_targets_now", failing_query)
    _, full = make_key()
    response = gateway.post(
        "/api/v1/authorize",
        {"key": full, "service": "ml-llm"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="retry-1",
    )
    assert response.status_code == 200
    assert Job.objects.filter(uuid=response.json()["job_id"]).exists()
    assert KeyJob.objects.filter(idempotency_key__isnull=False).count() == 1


HUGE = '{"key": "sk_a_b", "service": "ml-llm", "x": "' + "a" * 3_000_000 + '"}'


def test_a_body_over_the_upload_limit_is_400_after_the_token(api_client, gateway):
    api_client.credentials(HTTP_AUTHORIZATION="Bearer st_nope_nope")
    response = api_client.generic(
        "POST", "/api/v1/authorize", HUGE, content_type="application/json"
    )
    assert (response.status_code, response.json()["code"]) == (401, "service_token_invalid")
    response = gateway.generic("POST", "/api/v1/authorize", HUGE, content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (400, "bad_request")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"service": "ml-llm"}', "application/json; charset=base64"),
        (b"[" * 100_000, "application/json"),
    ],
)
def test_bodies_python_cannot_decode_are_400_not_500(gateway, content, content_type):
    response = gateway.generic("POST", "/api/v1/authorize", content, content_type=content_type)
    assert (response.status_code, response.json()["code"]) == (400, "bad_request")


def test_answers_escape_line_separators_and_list_the_allowed_methods(gateway):
    response = gateway.post(
        "/api/v1/authorize", {"key": "sk_a_b", "service": "ml-llm", "x\u2028": 1}, format="json"
    )
    assert response.status_code == 400
    assert b"\\u2028" in response.content and "\u2028".encode() not in response.content
    assert response["Allow"] == "POST, OPTIONS"
