"""Review of issue 6 (end-user API keys): each test names a behaviour that should hold and fails
because of a defect in the current code."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connections

from accounts.models import Scope
from accounts.services import user_create
from keys.caps import key_jobs_release
from keys.models import ApiKey
from keys.services import key_revoke
from tests.keys.conftest import authorize, once_of

pytestmark = pytest.mark.django_db


def settle(client, job_id, units):
    return client.post("/api/v1/usage", {"job_id": job_id, "units": units}, format="json")


# Bad input is never a 500 ---------------------------------------------------------------------


@pytest.mark.parametrize("units", ["²", "①", "\u0660\u00b2"])
def test_authorize_answers_400_for_digit_like_unit_strings(gateway, make_key, units):
    """_units() trusts str.isdigit(), which is true for '²' and '①', then int() raises: a 500."""
    _, full = make_key()
    gateway.raise_request_exception = False
    response = authorize(gateway, full, units=units)
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"


def test_the_keys_api_refuses_a_key_wide_limit_the_database_cannot_hold(token_client, cast, llm):
    """_limit_value accepts up to 2**53, KeyLimit.requests_per_minute is a 32-bit integer: 500."""
    client = token_client([Scope.KEYS], lab=cast.lab)
    client.raise_request_exception = False
    response = client.post(
        "/api/v1/keys",
        {
            "project": str(cast.alpha.uuid),
            "name": "big",
            "limits": {"*": {"requests_per_minute": 2**31}},
        },
        format="json",
    )
    assert response.status_code in (201, 400), response.status_code
    assert response.status_code != 201 or ApiKey.objects.count() == 1


def test_the_keys_page_refuses_a_key_wide_limit_the_database_cannot_hold(client, cast, llm):
    """The form's LIMIT_MAX is 2**53 but the column is a 32-bit integer: the page answers 500."""
    client.raise_request_exception = False
    client.force_login(cast.alice)
    response = client.post(
        "/app/keys/new/",
        {
            "once": once_of(client, "/app/keys/new/"),
            "name": "big",
            "project": str(cast.alpha.uuid),
            "service_access": "all",
            "credit_limit": "",
            "credit_limit_period": "",
            "expires_at": "",
            "limits.*.requests_per_minute": str(2**31),
        },
    )
    assert response.status_code == 400, response.status_code
    assert "Key-wide requests per minute: At most 2,147,483,647." in response.content.decode()


# Contract: headers ------------------------------------------------------------------------------


def test_a_units_limited_429_carries_the_rate_limit_headers(gateway, make_key):
    """Headers are only written from the requests scope: a units-only 429 has no X-RateLimit-*."""
    _, full = make_key(limits={"ml-llm": {"units_per_minute": 100}})
    assert authorize(gateway, full, units=80).status_code == 200
    response = authorize(gateway, full, units=30)
    assert response.status_code == 429
    assert "Retry-After" in response
    for header in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert header in response, header


# Credit cap -----------------------------------------------------------------------------------


def test_usage_posted_on_the_accounting_route_still_counts_against_the_key_cap(
    cast, gateway, token_client, make_key
):
    """An authorized job settled through /api/accounting/usage/oneshot left its KeyJob unsettled:
    the cap kept the 0.01 estimate while the project paid 50 credits, so the cap was bypassed."""
    _, full = make_key(credit_limit="1")  # 100 units
    job_id = authorize(gateway, full, units=1).json()["job_id"]
    accounting = token_client([Scope.ACCOUNTING])
    response = accounting.post(
        "/api/accounting/usage/oneshot",
        {
            "type": "oneshot",
            "subtype": "ml-llm",
            "proj_id": str(cast.alpha.uuid),
            "count": "5000",
            "job_id": job_id,
            "timestamp": str(int(time.time())),
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert key_jobs_release() == 1  # the cap catches up within one run of the task
    refused = authorize(gateway, full, units=1)
    assert (refused.status_code, refused.json()["code"]) == (402, "key_credit_limit")


def test_a_delayed_authorize_from_the_previous_day_does_not_reset_todays_cap(gateway, make_key):
    """The cap UPDATE moves credit_period_start to whatever period the request computed, even an
    older one: an authorize that computed its period just before midnight and lands after one of
    the new day resets the row, and the next request of the new day starts from zero again."""
    _, full = make_key(credit_limit="10", credit_limit_period="daily")
    midnight = datetime(2031, 3, 4, tzinfo=UTC)
    with time_machine.travel(midnight + timedelta(seconds=1), tick=False):
        assert authorize(gateway, full, units=600).status_code == 200  # 6 of today's 10
    with time_machine.travel(midnight - timedelta(seconds=1), tick=False):
        authorize(gateway, full, units=100)  # computed "yesterday", committed after the above
    with time_machine.travel(midnight + timedelta(seconds=2), tick=False):
        response = authorize(gateway, full, units=600)  # 6 + 6 > 10
    assert (response.status_code, response.json()["code"]) == (402, "key_credit_limit")


# Concurrency (real threads, real PostgreSQL) ----------------------------------------------------


@pytest.fixture
def operator(transactional_db):
    return user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)


def _admin_rename_while_row_is_being_written(client, key, write) -> None:
    """`write(key)` runs in another transaction that holds the key's row while the operator's
    rename is posted; it commits once the rename has read the key and is waiting on the row."""
    written, release = threading.Event(), threading.Event()

    def other() -> None:
        try:
            from django.db import transaction

            with transaction.atomic():
                write(key)
                written.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other)
    thread.start()
    assert written.wait(10)
    timer = threading.Timer(1.0, release.set)
    timer.start()
    response = client.post(
        f"/admin/keys/apikey/{key.pk}/change/",
        {
            "name": "renamed",
            "expires_at_0": "",
            "expires_at_1": "",
            "limits-TOTAL_FORMS": "0",
            "limits-INITIAL_FORMS": "0",
        },
    )
    thread.join()
    assert response.status_code == 302


@pytest.mark.django_db(transaction=True)
def test_an_operator_rename_does_not_undo_a_concurrent_revocation(client, operator, make_key):
    """ApiKeyAdmin saves the whole row (Model.save): a revocation committed between the admin's
    read and its UPDATE is overwritten with revoked_at = NULL, and the key works again."""
    key, _ = make_key()
    client.force_login(operator)
    _admin_rename_while_row_is_being_written(client, key, lambda k: key_revoke(key=k))
    key.refresh_from_db()
    assert key.name == "renamed"
    assert key.revoked_at is not None


@pytest.mark.django_db(transaction=True)
def test_an_operator_rename_does_not_undo_a_concurrent_cap_hold(client, operator, make_key):
    """ApiKeyAdmin's full-row save writes back the credit_used it read: a hold authorize counted
    meanwhile is lost, and the key can spend it again past its cap."""
    key, _ = make_key(credit_limit="10")

    def hold(k):
        ApiKey.objects.filter(pk=k.pk).update(credit_used=Decimal("7"))

    client.force_login(operator)
    _admin_rename_while_row_is_being_written(client, key, hold)
    key.refresh_from_db()
    assert key.credit_used == Decimal("7")
