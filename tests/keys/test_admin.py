"""The operators' admin of API keys and their jobs: lists, search, no secrets, revocation."""

from __future__ import annotations

import pytest

from accounts.services import user_create
from keys.models import ApiKey, KeyJob
from keys.services import key_rotate
from tests.keys.conftest import authorize

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(db):
    return user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)


@pytest.fixture
def admin_client(client, operator):
    client.force_login(operator)
    return client


@pytest.mark.parametrize(
    "path",
    [
        "/admin/keys/apikey/",
        "/admin/keys/apikey/?q=gateway",
        "/admin/keys/apikey/?revoked_at__isempty=1",
        "/admin/keys/apikey/?expires_at__isempty=0",
        "/admin/keys/apikey/?credit_limit__isempty=0",
        "/admin/keys/apikey/?credit_limit_period__exact=daily",
        "/admin/keys/apikey/?o=4",
        "/admin/keys/keyjob/",
        "/admin/keys/keyjob/?settled_at__isempty=1",
        "/admin/keys/keyjob/?service_slug__exact=ml-llm",
        "/admin/keys/keyjob/?q=gateway",
    ],
)
def test_changelists_search_and_filter(admin_client, make_key, gateway, path):
    _, full = make_key(credit_limit="5", credit_limit_period="daily")
    assert authorize(gateway, full).status_code == 200
    response = admin_client.get(path)
    assert response.status_code == 200, path


def test_the_list_shows_keys_masked_with_their_lab(admin_client, cast, make_key):
    key, full = make_key(name="the gateway")
    page = admin_client.get("/admin/keys/apikey/").content.decode()
    assert "the gateway" in page and key.lookup_id in page and "Alice Lab" in page
    assert full not in page and key.secret_hash not in page


def test_a_pasted_key_finds_its_key(admin_client, make_key):
    wanted, full = make_key(name="wanted")
    make_key(name="other")
    for term in (full, wanted.masked, f"sk_{wanted.lookup_id}"):
        response = admin_client.get("/admin/keys/apikey/", {"q": term})
        assert list(response.context["cl"].result_list) == [wanted], term


def test_the_change_page_never_shows_a_secret_or_hash(admin_client, make_key):
    key, old = make_key(limits={"*": {"requests_per_minute": 7}})
    key, new = key_rotate(key=key)
    page = admin_client.get(f"/admin/keys/apikey/{key.pk}/change/").content.decode()
    assert key.masked in page
    assert "secret_hash" not in page
    for secret in (old, new, key.secret_hash, key.previous_secret_hash):
        assert secret not in page
    assert "requests_per_minute" in page or "Requests per minute" in page  # the limits inline


def test_an_operator_may_rename_a_key_but_not_change_its_settings(admin_client, make_key):
    key, _ = make_key(credit_limit="5")
    response = admin_client.post(
        f"/admin/keys/apikey/{key.pk}/change/",
        {
            "name": "renamed",
            "expires_at_0": "",
            "expires_at_1": "",
            "credit_limit": "999",
            "limits-TOTAL_FORMS": "0",
            "limits-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content
    key.refresh_from_db()
    assert key.name == "renamed" and str(key.credit_limit) == "5.000000"


def test_keys_are_not_added_or_deleted_in_the_admin(admin_client, make_key):
    key, _ = make_key()
    assert admin_client.get("/admin/keys/apikey/add/").status_code == 403
    assert admin_client.post(f"/admin/keys/apikey/{key.pk}/delete/").status_code == 403
    assert ApiKey.objects.count() == 1


def test_the_revoke_action(admin_client, operator, cast, make_key, gateway):
    first, first_full = make_key(name="first")
    second, _ = make_key(name="second")
    kept, kept_full = make_key(name="kept")
    response = admin_client.post(
        "/admin/keys/apikey/",
        {"action": "revoke", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )
    assert "Revoked 2 key(s)." in response.content.decode()
    first.refresh_from_db()
    kept.refresh_from_db()
    assert first.revoked_at is not None and first.revoked_by == operator
    assert kept.revoked_at is None
    assert authorize(gateway, first_full).json()["code"] == "key_revoked"
    assert authorize(gateway, kept_full).status_code == 200
    # Again: the first revocation stands.
    revoked_at = first.revoked_at
    admin_client.post("/admin/keys/apikey/", {"action": "revoke", "_selected_action": [first.pk]})
    first.refresh_from_db()
    assert first.revoked_at == revoked_at


def test_key_jobs_are_read_only(admin_client, make_key, gateway):
    _, full = make_key()
    authorize(gateway, full, units=3)
    job = KeyJob.objects.get()
    assert admin_client.get(f"/admin/keys/keyjob/{job.pk}/change/").status_code == 200
    assert admin_client.get("/admin/keys/keyjob/add/").status_code == 403
    admin_client.post(
        f"/admin/keys/keyjob/{job.pk}/change/", {"service_slug": "other", "estimated_units": "1"}
    )
    job.refresh_from_db()
    assert (job.service_slug, job.estimated_units) == ("ml-llm", 3)
    assert admin_client.post(f"/admin/keys/keyjob/{job.pk}/delete/").status_code == 403


def test_non_staff_cannot_open_it(client, cast, make_key):
    make_key()
    client.force_login(cast.alice)
    response = client.get("/admin/keys/apikey/")
    assert response.status_code == 302 and "/admin/login/" in response.url


def test_the_list_shows_what_a_capped_key_used_and_no_figure_for_an_uncapped_one(
    admin_client, cast, make_key, gateway
):
    _capped, capped_secret = make_key(name="capped", credit_limit="5")
    make_key(name="uncapped")
    assert authorize(gateway, capped_secret, units=100).status_code == 200  # holds 1.00
    page = admin_client.get("/admin/keys/apikey/").content.decode()
    assert '<td class="field-cap_used">1.00</td>' in page
    assert '<td class="field-cap_used">— no cap</td>' in page
