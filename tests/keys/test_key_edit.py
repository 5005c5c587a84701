"""Changing a key's settings: on the keys page (its creator and the lab's owners and admins) and
with PATCH /api/v1/keys/{id} (a keys-scoped token that sees the key). The secret stays; the new
settings decide the next authorize; a cap added or moved to another period counts what the key
already spent in it, and the holds still open count exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from accounts.models import Scope
from keys.models import ApiKey, KeyLimit
from keys.selectors import key_credit_used
from keys.services import key_patch, key_revoke
from tests.keys.conftest import authorize
from tests.metering.test_reservations import priced_service

pytestmark = pytest.mark.django_db

# After the fixtures' grants (made now), mid-month and mid-week.
JAN_20 = datetime(2027, 1, 20, 10, 0, tzinfo=UTC)


def settle(client, job_id, units):
    response = client.post("/api/v1/usage", {"job_id": job_id, "units": units}, format="json")
    assert response.status_code == 200, response.json()


def used(key):
    key.refresh_from_db()
    return key_credit_used(key, timezone.now())


def test_a_cap_added_counts_this_periods_charges_and_open_holds_once(gateway, make_key):
    with time_machine.travel(JAN_20, tick=True):
        key, full = make_key()  # no cap
        settle(gateway, authorize(gateway, full, units=100).json()["job_id"], 100)  # 1.00
        open_job = authorize(gateway, full, units=200).json()["job_id"]  # holds 2.00
        key_patch(key=key, changes={"credit_limit": "5", "credit_limit_period": "monthly"})
        # The charge counts; the open hold was not counted under no cap, so it counts its
        # charge when it settles, not its hold then its charge.
        assert used(key) == Decimal("1")
        settle(gateway, open_job, 150)
        assert used(key) == Decimal("2.5")
        assert authorize(gateway, full, units=300).json()["code"] == "key_credit_limit"
        assert authorize(gateway, full, units=250).json()["code"] == "allowed"


def test_a_new_period_counts_only_what_was_spent_in_it(gateway, make_key):
    with time_machine.travel(JAN_20 - timedelta(days=1), tick=True) as clock:
        key, full = make_key(credit_limit="100", credit_limit_period="monthly")
        settle(gateway, authorize(gateway, full, units=50).json()["job_id"], 50)  # 0.50, Jan 19
        clock.move_to(JAN_20)
        settle(gateway, authorize(gateway, full, units=100).json()["job_id"], 100)  # 1.00
        open_job = authorize(gateway, full, units=200).json()["job_id"]  # 2.00, in January's
        assert used(key) == Decimal("3.5")
        key_patch(key=key, changes={"credit_limit_period": "daily", "credit_limit": "3"})
        assert used(key) == Decimal("1")  # today's charge; the hold was counted in the month
        settle(gateway, open_job, 150)
        assert used(key) == Decimal("2.5")  # its charge, once
        assert authorize(gateway, full, units=51).json()["code"] == "key_credit_limit"
        assert authorize(gateway, full, units=50).json()["code"] == "allowed"


def test_a_new_amount_alone_keeps_what_the_cap_counted(gateway, make_key):
    with time_machine.travel(JAN_20, tick=True):
        key, full = make_key(credit_limit="10", credit_limit_period="monthly")
        settle(gateway, authorize(gateway, full, units=100).json()["job_id"], 100)
        open_job = authorize(gateway, full, units=200).json()["job_id"]
        key_patch(key=key, changes={"credit_limit": "3"})
        assert used(key) == Decimal("3") and key.credit_limit_period == "monthly"
        assert authorize(gateway, full, units=1).json()["code"] == "key_credit_limit"
        settle(gateway, open_job, 100)  # its hold of 2 replaced by a charge of 1
        assert used(key) == Decimal("2")
        assert authorize(gateway, full, units=100).json()["code"] == "allowed"
        key = key_patch(key=key, changes={"credit_limit": None})  # the period goes with it
        assert (key.credit_limit, key.credit_limit_period) == (None, "")
        assert authorize(gateway, full, units=5000).json()["code"] == "allowed"


def test_a_cap_put_back_in_its_period_counts_the_holds_it_had_counted(gateway, make_key):
    with time_machine.travel(JAN_20, tick=True):
        key, full = make_key(credit_limit="10", credit_limit_period="monthly")
        settle(gateway, authorize(gateway, full, units=100).json()["job_id"], 100)  # 1.00
        open_job = authorize(gateway, full, units=200).json()["job_id"]  # 2.00 in January's
        key_patch(key=key, changes={"credit_limit": None})
        key_patch(key=key, changes={"credit_limit": "10", "credit_limit_period": "monthly"})
        assert used(key) == Decimal("3")  # its settlement takes the hold off: it is counted
        settle(gateway, open_job, 100)
        assert used(key) == Decimal("2")


def test_new_limits_and_services_decide_the_next_authorize(cast, gateway, make_key):
    key, full = make_key()
    priced_service("ml-other")
    key_patch(key=key, changes={"limits": {"ml-llm": {"requests_per_minute": 1}}})
    assert authorize(gateway, full).status_code == 200
    assert authorize(gateway, full).json()["code"] == "rate_limited"
    key_patch(key=key, changes={"services": ["ml-other"], "limits": None})
    assert authorize(gateway, full).json()["code"] == "service_not_allowed"
    assert authorize(gateway, full, service="ml-other").status_code == 200
    assert not KeyLimit.objects.filter(key=key).exists()


# The management API ---------------------------------------------------------------------------


@pytest.fixture
def keys_token(token_client, cast):
    return token_client([Scope.KEYS], lab=cast.lab)


def patch(client, key, **body):
    return client.patch(f"/api/v1/keys/{key.uuid}", body, format="json")


def test_patch_changes_the_fields_given_and_keeps_the_rest(keys_token, make_key, gateway):
    key, full = make_key(
        limits={"*": {"units_per_minute": 5000}}, credit_limit="7", credit_limit_period="weekly"
    )
    response = patch(keys_token, key, name="renamed", credit_limit="9.5")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["name"], body["credit_limit"], body["credit_limit_period"]) == (
        "renamed", "9.500000", "weekly",
    )  # fmt: skip
    assert body["limits"] == {"*": {"requests_per_minute": None, "units_per_minute": 5000}}
    assert "key" not in body and full not in response.content.decode()
    assert authorize(gateway, full).status_code == 200  # the same secret


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"project": "00000000-0000-0000-0000-000000000000"}, "project"),  # never changes
        ({"limits": {"ml-llm": {"requests_per_minute": 0}}}, "limits.ml-llm.requests_per_minute"),
        ({"credit_limit": "-1"}, "credit_limit"),
        ({"credit_limit_period": "hourly"}, "credit_limit_period"),
        ({"credit_limit_period": "daily"}, "credit_limit_period"),  # no cap to reset
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"services": []}, "services"),
        ({"name": " "}, "name"),
        ({"services": ["nope"]}, "services"),
    ],
)
def test_bad_patches_are_400_and_change_nothing(keys_token, make_key, body, field):
    key, _ = make_key(name="kept")
    before = ApiKey.objects.values().get(pk=key.pk)
    response = patch(keys_token, key, **body)
    assert response.status_code == 400, response.json()
    assert field in response.json()["details"], response.json()
    assert ApiKey.objects.values().get(pk=key.pk) == before


def test_a_limit_looser_than_the_services_default_is_refused(keys_token, make_key, llm):
    llm.key_requests_per_minute = 100
    llm.save()
    key, _ = make_key()
    response = patch(keys_token, key, limits={"ml-llm": {"requests_per_minute": 101}})
    assert response.status_code == 400
    assert "the service's default" in str(response.json()["details"])
    assert not KeyLimit.objects.filter(key=key).exists()


def test_revoked_and_expired_keys_do_not_change(keys_token, make_key):
    key, _ = make_key()
    key_revoke(key=key)
    response = patch(keys_token, key, name="again")
    assert (response.status_code, response.json()["message"]) == (
        400, "A revoked key cannot be changed.",
    )  # fmt: skip
    soon, _ = make_key(expires_at=timezone.now() + timedelta(minutes=1))
    with time_machine.travel(timezone.now() + timedelta(minutes=2)):
        response = patch(keys_token, soon, name="again")
    assert response.status_code == 400 and "expired" in response.json()["message"]
    assert set(ApiKey.objects.values_list("name", flat=True)) == {"gateway key"}


def test_the_outsiders_token_cannot_change_alices_key(token_client, cast, make_key):
    key, _ = make_key()
    charlie = token_client([Scope.KEYS], lab=cast.charlie_lab)
    assert patch(charlie, key, name="mine").status_code == 404
    no_scope = token_client([Scope.AUTHORIZE], lab=cast.lab)
    assert patch(no_scope, key, name="mine").status_code == 403
    assert ApiKey.objects.get().name == "gateway key"


# The keys page --------------------------------------------------------------------------------


def edit_url(key):
    return f"/app/keys/{key.uuid}/edit/"


def form_data(**overrides):
    return {
        "name": "Gateway prod",
        "service_access": "all",
        "credit_limit": "",
        "credit_limit_period": "",
        "expires_at": "",
        **overrides,
    }


def test_the_creator_edits_a_key_in_the_creation_form(client, cast, make_key, gateway):
    key, full = make_key(limits={"ml-llm": {"units_per_minute": 900}}, credit_limit="4")
    client.force_login(cast.alice)
    assert f'href="{edit_url(key)}"' in client.get("/app/keys/").content.decode()
    page = client.get(edit_url(key))
    assert page.status_code == 200
    form = page.context["form"]
    assert form["name"].value() == "gateway key" and form["credit_limit"].value() == "4"
    assert form["limits.ml-llm.units_per_minute"].value() == 900
    assert 'name="project"' not in page.content.decode()
    response = client.post(
        edit_url(key),
        form_data(**{"limits.*.requests_per_minute": "30", "credit_limit": "6"}),
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.credit_limit) == ("Gateway prod", Decimal("6"))
    assert list(key.limits.values_list("service_slug", "requests_per_minute")) == [("*", 30)]
    assert authorize(gateway, full).status_code == 200


def test_a_form_error_changes_nothing(client, cast, make_key, llm):
    llm.key_units_per_minute = 5000
    llm.save()
    key, _ = make_key(name="kept")
    client.force_login(cast.alice)
    response = client.post(edit_url(key), form_data(**{"limits.ml-llm.units_per_minute": "5001"}))
    assert response.status_code == 400
    assert "the service&#x27;s default" in response.content.decode()
    key.refresh_from_db()
    assert key.name == "kept" and not key.limits.exists()


def test_members_who_did_not_make_it_get_403_and_outsiders_404(client, cast, make_key):
    key, _ = make_key(created_by=cast.alice)
    for user, status in ((cast.bob, 403), (cast.charlie, 404)):
        client.force_login(user)
        assert client.get(edit_url(key)).status_code == status
        assert client.post(edit_url(key), form_data(name="taken")).status_code == status
    assert ApiKey.objects.get().name == "gateway key"


def test_a_revoked_key_has_no_edit_form(client, cast, make_key):
    key, _ = make_key()
    key_revoke(key=key)
    client.force_login(cast.alice)
    response = client.get(edit_url(key))
    assert response.status_code == 302 and response["Location"] == "/app/keys/"
    assert client.post(edit_url(key), form_data(name="x")).status_code == 302
    assert ApiKey.objects.get().name == "gateway key"


@pytest.mark.django_db(transaction=True)
def test_cap_changes_racing_authorizes_and_settlements_leave_the_count_exact(cast, make_key):
    """Four threads authorize and settle while a fifth moves the cap between periods and
    amounts: once every job is settled, the cap counts exactly the charges of its period."""
    import threading

    from django.db import connections

    from accounts.services import service_token_create
    from keys.authorize import authorize as decide
    from keys.caps import cap_period_start, key_job_for, key_job_usage_record
    from keys.models import KeyJob
    from tests.billing.test_concurrency import run_threads

    clock = time_machine.travel(JAN_20, tick=True)  # day, week and month begin apart
    clock.start()
    key, full = make_key(credit_limit="1000", credit_limit_period="monthly")
    token, _ = service_token_create(name="gateway", scopes=[Scope.AUTHORIZE, Scope.USAGE])
    working = threading.Event()
    working.set()

    def work(index):
        if index == 4:  # the editor
            for n in range(8):
                period = ("daily", "weekly", "monthly")[n % 3]
                key_patch(
                    key=key, changes={"credit_limit_period": period, "credit_limit": str(900 + n)}
                )
            working.clear()
            return
        for _ in range(6):
            decision = decide(token=token, raw_key=full, slug="ml-llm", units=100)
            assert decision.code == "allowed", decision.code
            key_job = key_job_for(decision.job_id)
            key_job_usage_record(key_job=key_job, units=50, token=token)
        connections.close_all()

    assert run_threads(5, work) == []
    assert not working.is_set()
    key.refresh_from_db()
    assert not KeyJob.objects.filter(key=key, settled_at__isnull=True).exists()
    start = cap_period_start(key.credit_limit_period, timezone.now())
    charged = sum(
        KeyJob.objects.filter(key=key, settled_at__gte=start).values_list("charged", flat=True)
    )
    assert key_credit_used(key, timezone.now()) == charged
    clock.stop()


@pytest.mark.parametrize("new_period", ["weekly", "monthly", None])
def test_an_authorize_that_read_the_old_period_counts_in_the_new_one(gateway, make_key, new_period):
    from accounts.services import service_token_create
    from keys.authorize import authorize as decide
    from keys.authorize import key_read

    token, _ = service_token_create(name="gw", scopes=[Scope.AUTHORIZE, Scope.USAGE])
    with time_machine.travel(JAN_20, tick=True):
        key, full = make_key(credit_limit="5", credit_limit_period="daily")
        settle(gateway, authorize(gateway, full, units=300).json()["job_id"], 300)  # 3.00
        read = key_read(full, "ml-llm")  # in flight: it read the daily cap
        key_patch(key=key, changes={"credit_limit_period": new_period})
        stale = decide(token=token, raw_key=full, slug="ml-llm", units=100, read=read)
        assert stale.code == "allowed"
        assert used(key) == Decimal("4")  # 3 recounted + 1 held, not a fresh period
        assert authorize(gateway, full, units=300).json()["code"] == "key_credit_limit"


@pytest.mark.django_db(transaction=True)
def test_a_release_racing_a_period_change_counts_nothing_twice(gateway, make_key, monkeypatch):
    import threading

    from django.db import connection

    from keys import caps
    from metering.models import Job
    from metering.reservations import reservation_release

    with time_machine.travel(JAN_20, tick=True):
        key, full = make_key(credit_limit="5", credit_limit_period="daily")
        settle(gateway, authorize(gateway, full, units=300).json()["job_id"], 300)  # 3.00
        job_id = authorize(gateway, full, units=100).json()["job_id"]  # holds 1.00
        reservation_release(job=Job.objects.get(uuid=job_id))
        adjust = caps._cap_adjust

        def edited_meanwhile(*args, **kwargs):
            def edit():
                try:
                    key_patch(key=key, changes={"credit_limit_period": "weekly"})
                finally:
                    connection.close()

            thread = threading.Thread(target=edit)
            thread.start()
            thread.join(30)
            return adjust(*args, **kwargs)

        monkeypatch.setattr(caps, "_cap_adjust", edited_meanwhile)
        assert caps.key_jobs_release() == 1
        assert used(key) == Decimal("3")  # the week's charge; the released hold never counted


def test_a_cap_removed_while_an_authorize_was_in_flight_does_not_refuse_it(gateway, make_key):
    from accounts.services import service_token_create
    from keys.authorize import authorize as decide
    from keys.authorize import key_read

    token, _ = service_token_create(name="gw", scopes=[Scope.AUTHORIZE])
    key, full = make_key(credit_limit="0.5")
    read = key_read(full, "ml-llm")
    key_patch(key=key, changes={"credit_limit": None})
    assert decide(token=token, raw_key=full, slug="ml-llm", units=100, read=read).allowed


def test_two_patches_of_different_fields_both_stay(make_key):
    key, _ = make_key(credit_limit="100")
    stale = ApiKey.objects.get(pk=key.pk)  # what another request's view read
    key_patch(key=key, changes={"credit_limit": "1"})
    key_patch(key=stale, changes={"name": "renamed"})
    key.refresh_from_db()
    assert (key.name, key.credit_limit) == ("renamed", Decimal("1"))


def test_services_no_longer_offered_stay_as_they_are(client, cast, make_key, keys_token):
    from metering.models import Service

    priced_service("ml-other")
    key, _ = make_key(
        services=["ml-llm", "ml-other"], limits={"ml-other": {"units_per_minute": 10}}
    )
    Service.objects.filter(slug="ml-other").update(is_active=False)
    assert patch(keys_token, key, name="renamed").status_code == 200
    client.force_login(cast.alice)
    page = client.get(edit_url(key)).content.decode()
    assert "Kept as they are: ml-other (no longer offered)." in page
    data = form_data(service_access="some", services=["ml-llm"])
    assert client.post(edit_url(key), data).status_code == 302
    key.refresh_from_db()
    assert key.services == ["ml-llm", "ml-other"]
    assert list(key.limits.values_list("service_slug", "units_per_minute")) == [("ml-other", 10)]
    response = patch(keys_token, key, services=["ml-llm", "ml-gone"])  # never offered: refused
    assert response.status_code == 400 and "ml-gone" in str(response.json()["details"])


def test_saving_the_form_unchanged_keeps_the_exact_expiry(client, cast, make_key):
    expiry = (timezone.now() + timedelta(days=3)).replace(second=45, microsecond=123456)
    key, _ = make_key(expires_at=expiry)
    client.force_login(cast.alice)
    shown = client.get(edit_url(key)).context["form"]["expires_at"].value()
    data = form_data(name="gateway key", expires_at=shown.strftime("%Y-%m-%dT%H:%M"))
    assert client.post(edit_url(key), data).status_code == 302
    key.refresh_from_db()
    assert key.expires_at == expiry


def test_an_empty_period_in_a_patch_means_none(keys_token, make_key):
    key, _ = make_key(credit_limit="3", credit_limit_period="daily")
    response = patch(keys_token, key, credit_limit_period="")
    assert response.status_code == 200 and response.json()["credit_limit_period"] is None
