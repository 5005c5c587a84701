"""Second review of issue 6 (end-user API keys): each test names a behaviour that should hold and
fails because of a defect the first review (tests/keys/test_review_keys.py) did not catch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import user_create
from keys.services import keys_expire
from metering.cost import Tier
from metering.services import discount_create
from tests.keys.conftest import authorize
from tests.metering.test_reservations import priced_service

pytestmark = pytest.mark.django_db

MIDNIGHT = datetime(2031, 3, 4, tzinfo=UTC)


def settle(client, job_id, units):
    return client.post("/api/v1/usage", {"job_id": job_id, "units": units}, format="json")


def me(full_key):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {full_key}")
    return client.get("/api/v1/key")


def by_slug(body):
    return {service["service"]: service for service in body["services"]}


# GET /api/v1/key: units_affordable ------------------------------------------------------------


@pytest.mark.parametrize("why_free", ["zero price", "100% discount"])
def test_units_affordable_is_zero_for_a_free_service_once_the_cap_is_exceeded(
    cast, llm, gateway, make_key, why_free
):
    """units_affordable answers null ("credits do not bound it") for a zero cost without looking
    at the cap, but authorize refuses even a zero-cost request once the cap is overspent (402)."""
    if why_free == "zero price":
        slug = "free"
        priced_service(slug, tiers=[Tier(0, None, Decimal(0), Decimal(0))])
    else:
        slug = "tiered"
        priced_service(slug, tiers=[Tier(0, None, Decimal(1), Decimal("0.5"))])
    _, full = make_key(credit_limit="1")
    job_id = authorize(gateway, full, units=10).json()["job_id"]  # ml-llm, 0.10 held
    assert settle(gateway, job_id, 500).status_code == 200  # charged 5.00: the cap is overspent
    if why_free == "100% discount":
        discount_create(
            lab=cast.lab, discount=Decimal(1), valid_from=timezone.now() - timedelta(seconds=1)
        )
    refused = authorize(gateway, full, service=slug, units=5)
    assert (refused.status_code, refused.json()["code"]) == (402, "key_credit_limit")
    assert by_slug(me(full).json())[slug]["units_affordable"] == 0


# GET /api/v1/key: usage across a UTC month boundary -----------------------------------------


def test_usage_this_month_and_today_count_a_charge_made_after_midnight(gateway, make_key):
    """key_usage groups by KeyJob.created_at (the authorize time): a job authorized at 23:59:55 on
    the last day of a month and settled at 00:00:05 shows 0 charged today and this month, while
    the ledger and the monthly cap in the same answer count the charge in the new month."""
    _, full = make_key(credit_limit="100", credit_limit_period="monthly")
    new_month = datetime(2031, 2, 1, tzinfo=UTC)
    with time_machine.travel(new_month - timedelta(seconds=5), tick=False):
        job_id = authorize(gateway, full, units=100).json()["job_id"]
    with time_machine.travel(new_month + timedelta(seconds=5), tick=False):
        assert settle(gateway, job_id, 100).status_code == 200  # charged 1.00 now
        body = me(full).json()
    assert body["credit_limit"]["used"] == "1.000000"  # the cap counts it in February
    for period in ("today", "this_month"):
        assert body["usage"][period]["units"] == 100, period
        assert body["usage"][period]["charged"] == "1.000000", period


# The credit cap across a period boundary ------------------------------------------------------


def test_a_settle_that_lands_after_a_new_period_began_does_not_free_the_new_periods_cap(
    gateway, make_key
):
    """key_job_settle decides "same period" from a Python clock read (before it waits on the key's
    row lock) and _ADJUST applies -hold to whatever period the row is in: yesterday's hold is
    subtracted from today's count, and the key can spend that much more than its cap today."""
    _, full = make_key(credit_limit="10", credit_limit_period="daily")
    with time_machine.travel(MIDNIGHT - timedelta(seconds=10), tick=False):
        yesterday_job = authorize(gateway, full, units=600).json()["job_id"]  # 6 held yesterday
    with time_machine.travel(MIDNIGHT + timedelta(seconds=1), tick=False):
        assert authorize(gateway, full, units=600).status_code == 200  # 6 of today's 10
    with time_machine.travel(MIDNIGHT - timedelta(seconds=1), tick=False):
        # Computed its period just before midnight; its UPDATE landed after the one above.
        assert settle(gateway, yesterday_job, 0).status_code == 200  # charged 0
    with time_machine.travel(MIDNIGHT + timedelta(seconds=2), tick=False):
        response = authorize(gateway, full, units=600)  # 6 + 6 > 10
    assert (response.status_code, response.json()["code"]) == (402, "key_credit_limit")


def test_a_hold_counted_in_the_new_period_is_replaced_by_its_charge(gateway, make_key):
    """A hold whose request computed yesterday's period is counted in today's (the row's period
    never moves back) but its KeyJob records yesterday's period: at settle time it is taken for
    another period's hold, never removed, and the charge is added on top (counted twice)."""
    _, full = make_key(credit_limit="10", credit_limit_period="daily")
    with time_machine.travel(MIDNIGHT + timedelta(seconds=1), tick=False):
        assert authorize(gateway, full, units=600).status_code == 200  # 6 of today's 10
    with time_machine.travel(MIDNIGHT - timedelta(seconds=1), tick=False):
        late_job = authorize(gateway, full, units=100).json()["job_id"]  # counted today: 7
    with time_machine.travel(MIDNIGHT + timedelta(seconds=2), tick=False):
        assert settle(gateway, late_job, 100).status_code == 200  # charge 1 replaces hold 1: 7
        assert me(full).json()["credit_limit"]["used"] == "7.000000"
        response = authorize(gateway, full, units=300)  # 7 + 3 = 10, within the cap
    assert response.status_code == 200, response.json()


# Expiry marks -------------------------------------------------------------------------------


def test_an_expiry_extended_by_an_operator_unmarks_the_key_and_is_marked_again(
    client, make_key, gateway
):
    """ApiKeyAdmin saves only name and expires_at: a key the expiry task marked keeps expired_at
    after an operator extends it (it is active again), and when the new expiry passes
    keys_expire skips it (expired_at already set), so it is never marked for that expiry."""
    key, full = make_key(expires_at=timezone.now() + timedelta(minutes=1))
    later = timezone.now() + timedelta(minutes=2)
    with time_machine.travel(later, tick=False):
        assert keys_expire() == 1
    operator = user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)
    client.force_login(operator)
    new_expiry = timezone.now() + timedelta(days=30)
    response = client.post(
        f"/admin/keys/apikey/{key.pk}/change/",
        {
            "name": key.name,
            "expires_at_0": new_expiry.strftime("%Y-%m-%d"),
            "expires_at_1": new_expiry.strftime("%H:%M:%S"),
            "limits-TOTAL_FORMS": "0",
            "limits-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302
    assert authorize(gateway, full).status_code == 200  # active again
    key.refresh_from_db()
    assert key.expired_at is None
    with time_machine.travel(new_expiry + timedelta(minutes=1), tick=False):
        assert keys_expire() == 1
