"""The API keys pages through the cast: members see their lab's keys, creators and lab owners
revoke and rotate them, the outsider sees nothing and gets 404."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.contrib.sessions.models import Session
from django.utils import timezone

from keys.models import ApiKey, KeyLimit
from keys.views import duration_display
from metering.cost import Tier
from metering.models import Service
from tests.keys.conftest import authorize, once_of
from tests.metering.test_reservations import priced_service

pytestmark = pytest.mark.django_db

KEYS = "/app/keys/"
NEW = "/app/keys/new/"


@pytest.fixture
def limited_llm(llm):
    """ml-llm with operator defaults: at most 100 requests and 5000 units a minute per key."""
    llm.key_requests_per_minute = 100
    llm.key_units_per_minute = 5000
    llm.save()
    return llm


def post_new(client, cast, user, **overrides):
    """`user`, signed in, opens the new key form and posts it: all services of Alpha, unless
    overridden."""
    client.force_login(user)
    data = {
        "once": once_of(client, NEW),
        "name": "Gateway prod",
        "project": str(cast.alpha.uuid),
        "service_access": "all",
        "credit_limit": "",
        "credit_limit_period": "",
        "expires_at": "",
        **overrides,
    }
    return client.post(NEW, data)


def revoke_url(key):
    return f"/app/keys/{key.uuid}/revoke/"


def rotate_url(key):
    return f"/app/keys/{key.uuid}/rotate/"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(86400, "24 hours"), (3600, "1 hour"), (5400, "90 minutes"), (45, "45 seconds"), (7 * 86400, "7 days"), (61, "61 seconds")],
)  # fmt: skip
def test_the_grace_period_reads_in_words(seconds, text):
    assert duration_display(seconds) == text


def test_the_page_needs_a_login(client):
    response = client.get(KEYS)
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/")


def test_app_keys_without_a_slash_leads_to_the_page(client, cast):
    client.force_login(cast.bob)
    response = client.get("/app/keys")
    assert (response.status_code, response.url) == (301, KEYS)


def test_members_see_the_labs_keys_with_usage_and_limits(client, cast, make_key, gateway):
    key, full = make_key(
        name="Alice gateway",
        limits={"*": {"requests_per_minute": 30}, "ml-llm": {"units_per_minute": 2500}},
        credit_limit="5",
        credit_limit_period="monthly",
        expires_at=timezone.now() + timedelta(days=30),
    )
    assert authorize(gateway, full, units=40).status_code == 200
    job_id = authorize(gateway, full, units=10).json()["job_id"]
    assert (
        gateway.post("/api/v1/usage", {"job_id": job_id, "units": 8}, format="json").status_code
        == 200
    )
    for user in (cast.alice, cast.bob):
        client.force_login(user)
        page = client.get(KEYS).content.decode()
        row = page.split(f'data-key="{key.uuid}"')[1].split("</article>")[0]
        assert "Alice gateway" in row
        assert f"sk_{key.lookup_id}_…" in row
        assert "Alice Lab / Alpha" in row
        assert "by alice@example.com" in row
        assert (timezone.now() + timedelta(days=30)).strftime("%Y-%m-%d") in row  # expiry
        assert ">active<" in row
        assert "2 requests" in row
        assert "8 units" in row  # settled units only: the open job has none yet
        assert "0.08 credits" in row  # what the settled job was charged
        assert "All services: 30 req/min" in row
        assert "ml-llm: 2,500 units/min" in row
        # 0.08 charged and 0.40 still held by the open authorization.
        assert "Credit cap: 5.00 monthly, 0.48 used this month (open holds included)" in row
        assert full not in page
        assert full.split("_", 2)[2] not in page


def test_the_outsider_sees_none_of_alices_keys(client, cast, make_key):
    key, _full = make_key(name="Alice secret gateway")
    make_key(project=cast.charlie_lab.projects.get(), name="Charlie key", created_by=cast.charlie)
    client.force_login(cast.charlie)
    page = client.get(KEYS).content.decode()
    assert "Charlie key" in page
    assert "Alice secret gateway" not in page
    assert key.lookup_id not in page
    assert str(key.uuid) not in page


def test_creating_a_key_shows_it_once(client, cast, limited_llm):
    response = post_new(
        client,
        cast,
        cast.bob,
        service_access="some",
        services=["ml-llm"],
        **{
            "limits.*.requests_per_minute": "50",
            "limits.ml-llm.requests_per_minute": "20",
            "limits.ml-llm.units_per_minute": "1000",
        },
        credit_limit="1,012.5",  # as pages show amounts
        credit_limit_period="weekly",
        expires_at=(timezone.now() + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M"),
    )
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get()
    full = response.context["full_key"]
    assert full.startswith(f"sk_{key.lookup_id}_")
    page = response.content.decode()
    assert f'value="{full}"' in page
    assert 'data-copy-target="full-key"' in page and "js/copy.js" in page
    assert "it will not be shown again" in page
    assert (key.name, key.project, key.created_by) == ("Gateway prod", cast.alpha, cast.bob)
    assert key.services == ["ml-llm"]
    assert (key.credit_limit, key.credit_limit_period) == (Decimal("1012.5"), "weekly")
    assert key.expires_at > timezone.now() + timedelta(days=6)
    assert {
        (limit.service_slug, limit.requests_per_minute, limit.units_per_minute)
        for limit in KeyLimit.objects.all()
    } == {
        ("*", 50, None),
        ("ml-llm", 20, 1000),
    }

    listing = client.get(KEYS).content.decode()
    assert key.masked in listing
    assert full not in listing
    assert full.split("_", 2)[2] not in listing
    for session in Session.objects.all():  # nor kept for later
        assert full.split("_", 2)[2] not in str(session.get_decoded())


def test_the_form_offers_the_users_projects_and_the_services_defaults(client, cast, limited_llm):
    client.force_login(cast.bob)
    page = client.get(NEW).content.decode()
    assert "Alice Lab / Alpha" in page and "Alice Lab / Beta" in page
    assert "Bob&#x27;s lab / Default" in page
    assert "Charlie" not in page
    assert "default and max 100" in page and "default and max 5,000" in page
    assert 'name="limits.ml-llm.requests_per_minute"' in page


def test_a_project_of_another_lab_is_refused(client, cast, llm):
    other = cast.charlie_lab.projects.get()
    response = post_new(client, cast, cast.alice, project=str(other.uuid))
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_a_limit_looser_than_the_default_is_a_form_error(client, cast, limited_llm):
    response = post_new(client, cast, cast.alice, **{"limits.ml-llm.requests_per_minute": "101"})
    assert response.status_code == 400
    page = response.content.decode()
    assert (
        'data-field="limits.ml-llm.requests_per_minute">At most 100, the service&#x27;s default'
        in page
    )
    assert response.context["form"].errors["limits.ml-llm.requests_per_minute"] == [
        "At most 100, the service's default: a key may be tighter, not looser."
    ]
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    ("data", "field", "error"),
    [
        ({"limits.*.requests_per_minute": "ten"}, "limits.*.requests_per_minute", "Enter a whole number."),
        ({"limits.ml-llm.units_per_minute": "-5"}, "limits.ml-llm.units_per_minute", "greater than or equal to 1"),
        ({"limits.ml-llm.units_per_minute": "2.5"}, "limits.ml-llm.units_per_minute", "Enter a whole number."),
        ({"credit_limit": "1.0000001"}, "credit_limit", "at most 6 decimal places"),
        ({"credit_limit": "-1"}, "credit_limit", "Amount must be at least 0"),
        ({"credit_limit": "lots"}, "credit_limit", "Amount must be a number"),
        ({"credit_limit": "1,5"}, "credit_limit", "Amount must be a number"),  # a decimal comma?
        ({"credit_limit_period": "monthly"}, "credit_limit_period", "A period needs a credit limit."),
        ({"credit_limit_period": "hourly", "credit_limit": "1"}, "credit_limit_period", "Select a valid choice"),
        ({"expires_at": "2001-01-01T00:00"}, "expires_at", "Must be in the future."),
        ({"expires_at": "tomorrow"}, "expires_at", "Enter a valid date/time."),
        ({"service_access": "some", "services": ["nope"]}, "services", "Select a valid choice. nope is not one of the available choices."),
        ({"service_access": "some"}, "services", "Check at least one service"),
        ({"service_access": "some", "services": ["ml-llm"], "limits.ml-llm.requests_per_minute": "5", "limits.ml-other.requests_per_minute": "5"}, "limits.ml-other.requests_per_minute", "The key is not allowed this service."),
        ({"name": "   "}, "name", "This field is required."),
        ({"project": "not-a-uuid"}, "project", "is not a valid UUID."),
    ],
)  # fmt: skip
def test_bad_input_is_a_form_error_and_writes_nothing(
    client, cast, limited_llm, data, field, error
):
    other = priced_service("ml-other")
    other.key_requests_per_minute = 10
    other.save()
    response = post_new(client, cast, cast.alice, **data)
    assert response.status_code == 400
    messages = response.context["form"].errors[field]
    assert any(error in message for message in messages), messages
    assert error in response.content.decode().replace("&#x27;", "'")
    assert not ApiKey.objects.exists()
    assert not KeyLimit.objects.exists()


def test_every_problem_shows_at_once(client, cast, limited_llm):
    response = post_new(
        client,
        cast,
        cast.alice,
        name="",
        credit_limit="0.1234567",
        expires_at="2001-01-01T00:00",
        **{"limits.ml-llm.units_per_minute": "5001", "limits.*.requests_per_minute": "x"},
    )
    assert response.status_code == 400
    assert set(response.context["form"].errors) == {
        "name",
        "credit_limit",
        "expires_at",
        "limits.ml-llm.units_per_minute",
        "limits.*.requests_per_minute",
    }
    alert = response.content.decode().split('role="alert"')[1].split("</article>")[0]
    assert "ml-llm units per minute: At most 5000" in alert
    assert "Key-wide requests per minute: Enter a whole number." in alert
    assert not ApiKey.objects.exists()


def test_a_member_cannot_revoke_or_rotate_someone_elses_key(client, cast, make_key):
    key, _full = make_key(created_by=cast.alice)
    client.force_login(cast.bob)
    page = client.get(KEYS).content.decode()
    assert key.masked in page
    assert revoke_url(key) not in page and rotate_url(key) not in page  # no buttons
    refused = client.get(revoke_url(key))
    assert refused.status_code == 403
    page = refused.content.decode()  # the portal's page, saying why
    assert "Not allowed" in page and "Only the key&#x27;s creator and the lab&#x27;s owners" in page
    assert 'href="/app/keys/"' in page  # the navigation is there
    assert client.post(revoke_url(key)).status_code == 403
    assert client.post(rotate_url(key)).status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None and key.rotated_at is None


def test_the_creator_and_the_owner_may_revoke(client, cast, make_key, gateway):
    bobs, bobs_full = make_key(name="Bob's key", created_by=cast.bob)
    client.force_login(cast.bob)
    assert revoke_url(bobs) in client.get(KEYS).content.decode()  # his own: buttons

    client.force_login(cast.alice)
    page = client.get(KEYS).content.decode()
    assert revoke_url(bobs) in page and rotate_url(bobs) in page  # the owner's: buttons
    confirm = client.get(revoke_url(bobs))
    assert confirm.status_code == 200
    assert "This cannot be undone." in confirm.content.decode()
    bobs.refresh_from_db()
    assert bobs.revoked_at is None  # asking is not doing

    response = client.post(revoke_url(bobs), follow=True)
    assert response.redirect_chain == [(KEYS, 302)]
    page = response.content.decode()
    assert f"Revoked Bob&#x27;s key ({bobs.masked})." in page
    row = page.split(f'data-key="{bobs.uuid}"')[1].split("</article>")[0]
    assert ">revoked<" in row
    assert revoke_url(bobs) not in page
    bobs.refresh_from_db()
    assert bobs.revoked_by == cast.alice
    assert authorize(gateway, bobs_full).json()["code"] == "key_revoked"


def test_the_outsider_gets_404_on_alices_keys(client, cast, make_key):
    key, _full = make_key()
    client.force_login(cast.charlie)
    for url in (revoke_url(key), rotate_url(key)):
        for method in (client.get, client.post):
            response = method(url)
            assert response.status_code == 404
            assert key.name not in response.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None and key.rotated_at is None


def test_rotate_shows_a_new_key_and_the_old_one_works_for_the_grace_period(
    client, cast, make_key, gateway, settings
):
    settings.API_KEY_ROTATION_GRACE_SECONDS = 3600
    key, old = make_key(name="Rotating key")
    client.force_login(cast.alice)
    assert "keeps working for 1 hour after" in client.get(rotate_url(key)).content.decode()
    response = client.post(rotate_url(key), {"once": once_of(client, rotate_url(key))})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    new = response.context["full_key"]
    assert new != old and new.startswith(f"sk_{key.lookup_id}_")
    key.refresh_from_db()
    page = response.content.decode()
    assert f'value="{new}"' in page
    assert old not in page
    until = key.previous_valid_until
    assert until - timezone.now() == pytest.approx(timedelta(hours=1), abs=timedelta(seconds=30))
    assert f"keeps working until <strong>{until:%Y-%m-%d %H:%M} UTC</strong> (1 hour)" in page

    assert authorize(gateway, old).status_code == 200
    assert authorize(gateway, new).status_code == 200
    assert (
        f"the previous secret works until {until:%Y-%m-%d %H:%M} UTC"
        in client.get(KEYS).content.decode()
    )
    with time_machine.travel(until + timedelta(seconds=1)):
        assert authorize(gateway, old).json()["code"] == "key_invalid"
        assert authorize(gateway, new).status_code == 200


def test_a_revoked_key_is_not_rotated(client, cast, make_key):
    key, _full = make_key()
    client.force_login(cast.alice)
    client.post(revoke_url(key))
    response = client.post(rotate_url(key), follow=True)
    assert "is revoked: no rotation" in response.content.decode()
    key.refresh_from_db()
    assert key.rotated_at is None


def test_the_navigation_and_the_dashboard_link_to_the_keys(client, cast):
    client.force_login(cast.bob)
    page = client.get("/app/").content.decode()
    assert page.count(f'href="{KEYS}"') == 2


# One-use forms: a reload of the page that shows a secret sends the POST again ------------------


def test_sending_the_new_key_form_again_makes_no_second_key(client, cast, llm):
    client.force_login(cast.alice)
    data = {
        "once": once_of(client, NEW),
        "name": "Reloaded",
        "project": str(cast.alpha.uuid),
        "service_access": "all",
    }
    first = client.post(NEW, data)
    assert first.status_code == 201
    full_key = first.context["full_key"]
    key = ApiKey.objects.get(name="Reloaded")

    again = client.post(NEW, data, follow=True)  # the browser's "resend the form?" on reload
    assert again.redirect_chain == [(KEYS, 302)]
    page = again.content.decode()
    assert f"This form was already sent: Reloaded ({key.masked}) was created then" in page
    assert full_key not in page
    assert ApiKey.objects.filter(name="Reloaded").count() == 1


def test_a_form_error_leaves_the_new_key_form_usable(client, cast, llm):
    client.force_login(cast.alice)
    once = once_of(client, NEW)
    data = {"once": once, "project": str(cast.alpha.uuid), "service_access": "all"}
    assert client.post(NEW, {**data, "name": ""}).status_code == 400
    assert client.post(NEW, {**data, "name": "Second try"}).status_code == 201
    assert ApiKey.objects.filter(name="Second try").count() == 1


@pytest.mark.parametrize("once", ["", "forged", "bobs"])
def test_a_new_key_form_without_its_own_token_makes_nothing(client, cast, llm, once):
    if once == "bobs":  # a token made for another user
        client.force_login(cast.bob)
        once = once_of(client, NEW)
    client.force_login(cast.alice)
    data = {"once": once, "name": "No token", "project": str(cast.alpha.uuid)}
    response = client.post(NEW, {**data, "service_access": "all"})
    assert response.status_code == 400
    assert "This form has expired or was already sent" in response.content.decode()
    assert not ApiKey.objects.filter(name="No token").exists()
    assert re.search(r'name="once" value="[^"]+"', response.content.decode())  # send it again


def test_sending_the_rotation_again_does_not_rotate_twice(client, cast, make_key, gateway):
    key, old = make_key(name="Rotated once")
    client.force_login(cast.alice)
    data = {"once": once_of(client, rotate_url(key))}
    first = client.post(rotate_url(key), data)
    assert first.status_code == 200
    new = first.context["full_key"]
    key.refresh_from_db()
    rotated_at = key.rotated_at

    again = client.post(rotate_url(key), data, follow=True)
    assert again.redirect_chain == [(KEYS, 302)]
    assert "Rotated once" in again.content.decode()
    assert "was rotated then, and its secret shown once" in again.content.decode()
    assert authorize(gateway, old).status_code == 200  # still in its grace period
    assert authorize(gateway, new).status_code == 200
    key.refresh_from_db()
    assert key.rotated_at == rotated_at


@pytest.mark.parametrize("once", ["", "forged", "another key's"])
def test_a_rotation_without_its_own_token_rotates_nothing(client, cast, make_key, gateway, once):
    key, old = make_key(name="Kept")
    client.force_login(cast.alice)
    if once == "another key's":
        other, _ = make_key(name="Other")
        once = once_of(client, rotate_url(other))
    response = client.post(rotate_url(key), {"once": once}, follow=True)
    assert response.redirect_chain == [(rotate_url(key), 302)]
    assert "That confirmation has expired" in response.content.decode()
    key.refresh_from_db()
    assert key.rotated_at is None
    assert authorize(gateway, old).status_code == 200


def test_the_project_picker_says_what_each_project_can_spend_and_starts_on_your_own(
    client, cast, llm
):
    from accounts.models import Project
    from billing import services as billing

    billing.budget_grant(project=cast.beta, amount="12.5")
    client.force_login(cast.bob)  # a member of Alice Lab, with a personal lab of his own
    page = client.get(NEW).content.decode()
    assert "Alice Lab / Beta (12.50 credits)" in page
    assert "Alice Lab / Alpha (100.00 credits)" in page  # the llm fixture funds it
    own = Project.objects.get(lab__personal_for=cast.bob)
    assert re.search(rf'<option value="{own.uuid}"[^>]*selected', page)


def test_with_the_cache_down_a_key_form_does_nothing_and_says_so(client, cast, make_key, settings):
    key, _old = make_key(name="Kept")
    client.force_login(cast.alice)
    new_once, rotate_once = once_of(client, NEW), once_of(client, rotate_url(key))
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        }
    }
    data = {"once": new_once, "name": "Not now", "project": str(cast.alpha.uuid)}
    response = client.post(NEW, {**data, "service_access": "all"})
    assert response.status_code == 503
    assert "Nothing was done" in response.content.decode()
    assert not ApiKey.objects.filter(name="Not now").exists()
    response = client.post(rotate_url(key), {"once": rotate_once})
    assert response.status_code == 302 and response["Location"] == rotate_url(key)
    key.refresh_from_db()
    assert key.rotated_at is None


def test_a_keys_units_are_shown_per_service_in_each_services_unit(client, cast, make_key, gateway):
    seconds = priced_service("mcp", tiers=[Tier(0, None, Decimal(0), Decimal("0.01"))])
    Service.objects.filter(pk=seconds.pk).update(unit_label="second")
    _key, full = make_key()
    for service, units in (("ml-llm", 6000), ("mcp", 103)):
        job_id = authorize(gateway, full, service=service, units=units).json()["job_id"]
        settled = gateway.post("/api/v1/usage", {"job_id": job_id, "units": units}, format="json")
        assert settled.status_code == 200
    client.force_login(cast.alice)
    page = client.get(KEYS).content.decode()
    assert "2 requests · 103 seconds on mcp · 6,000 units on ml-llm · 61.03 credits" in page


def test_a_revoked_key_does_not_claim_its_previous_secret_still_works(client, cast, make_key):
    key, _full = make_key()
    client.force_login(cast.alice)
    client.post(rotate_url(key), {"once": once_of(client, rotate_url(key))})
    assert "the previous secret works until" in client.get(KEYS).content.decode()
    client.post(revoke_url(key))
    page = client.get(KEYS).content.decode()
    assert "the previous secret works until" not in page
    assert "Revoked " in page and "by alice@example.com; it works nowhere." in page


def test_each_limit_field_is_labelled_with_its_service(client, cast, llm):
    client.force_login(cast.alice)
    page = client.get(NEW).content.decode()
    labels = re.findall(r"<label for=\"[^\"]+\">(Requests|Units) / min(.*?)\n", page)
    assert ("Requests", '<span class="sr-only"> for the whole key</span>') in labels
    assert ("Units", '<span class="sr-only"> for ml-llm</span>') in labels
    assert len(set(labels)) == len(labels)  # no two limit fields read the same
    assert "counted in units" in page  # the fixture's service counts in "unit"
