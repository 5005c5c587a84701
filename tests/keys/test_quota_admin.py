"""Operators' request-quota routes (/api/admin/...) and admin action: read what a lab used of
its plan's quotas and reset a quota for a lab that ran out. Operator tokens only; nobody else
can. (The month-of-usage route's figures: tests/metering/test_usage_page.py.)"""

from __future__ import annotations

import pytest
import redis
from django.test import Client
from django.utils import timezone

from accounts.models import Scope, User
from billing import plans
from billing.models import PlanSubscription
from keys import quotas, selectors
from keys.models import QuotaReset
from tests.keys.conftest import authorize
from tests.keys.test_quotas import key_client, plan_with_quotas
from tests.keys.test_redis_down import NOWHERE

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(token_client):
    return token_client([Scope.PLANS])


def quota_url(service, lab) -> str:
    return f"/api/admin/quotas/{service}/{lab.uuid}"


def test_an_operator_reads_a_labs_quotas_for_a_service_and_resets_one(
    cast, gateway, make_key, llm, operator
):
    plan_with_quotas(cast.lab, cast.alpha, {None: 5, llm: 3})
    _, full = make_key()
    assert [authorize(gateway, full).json()["code"] for _ in range(4)] == [
        "allowed", "allowed", "allowed", "quota_exceeded"
    ]  # fmt: skip
    response = operator.get(quota_url("ml-llm", cast.lab))
    body = response.json()
    assert response.status_code == 200, body
    assert (body["lab"], body["plan"], body["service"]) == (str(cast.lab.uuid), "free", "ml-llm")
    assert (body["remainingRequests"], body["limit"]) == (0, 3)
    assert body["quotas"] == [
        {"scope": "*", "limit": 5, "used": 3, "remaining": 2},
        {"scope": "ml-llm", "limit": 3, "used": 3, "remaining": 0},
    ]
    assert body["periodEnd"] is not None

    reset = operator.delete(quota_url("ml-llm", cast.lab))
    assert reset.status_code == 200, reset.json()
    assert reset.json()["quotas"][1] == {"scope": "ml-llm", "limit": 3, "used": 0, "remaining": 3}
    assert reset.json()["quotas"][0]["used"] == 3  # the every-service count is another quota
    assert reset.json()["remainingRequests"] == 2
    assert key_client(full).get("/api/quotas/ml-llm").json()["remainingRequests"] == 2
    codes = [authorize(gateway, full).json()["code"] for _ in range(3)]
    assert codes == ["allowed", "allowed", "quota_exceeded"]  # now the "*" quota of 5 is used up

    subscription = PlanSubscription.objects.get(lab=cast.lab)
    assert [
        (r.scope, r.by_user, r.by_token is not None) for r in subscription.quota_resets.all()
    ] == [("ml-llm", None, True)]  # the token that reset it, on record
    everything = operator.delete(quota_url("*", cast.lab))
    assert everything.status_code == 200
    assert everything.json()["quotas"] == [{"scope": "*", "limit": 5, "used": 0, "remaining": 5}]
    assert authorize(gateway, full).json()["code"] == "allowed"


def test_a_reset_of_a_quota_the_plan_does_not_have_is_404_and_resets_nothing(
    cast, gateway, make_key, llm, operator
):
    response = operator.delete(quota_url("ml-llm", cast.lab))
    assert (response.status_code, response.json()["message"]) == (
        404, "The lab's plan has no quota for 'ml-llm'"
    )  # fmt: skip
    plan_with_quotas(cast.lab, cast.alpha, {llm: 2})
    _, full = make_key()
    authorize(gateway, full)
    for service in ("*", "no-such-service", "%00", "x" * 300):
        response = operator.delete(quota_url(service, cast.lab))
        assert (response.status_code, response.json()["error_code"]) == (404, "ENTITY_NOT_FOUND")
    assert key_client(full).get("/api/quotas/ml-llm").json()["remainingRequests"] == 1
    assert not QuotaReset.objects.exists()


def test_a_lab_on_no_plan_has_no_quota_to_read(cast, llm, operator):
    body = operator.get(quota_url("ml-llm", cast.lab)).json()
    assert body == {
        "lab": str(cast.lab.uuid), "plan": None, "service": "ml-llm", "periodStart": None,
        "periodEnd": None, "remainingRequests": None, "limit": None, "quotas": [],
    }  # fmt: skip


@pytest.mark.parametrize("service", ["no-such-service", "%00", "caf%C3%A9", "x" * 300])
def test_unknown_services_and_labs_are_404_in_the_error_shape(cast, llm, operator, service):
    response = operator.get(quota_url(service, cast.lab))
    assert (response.status_code, response.json()["error_code"]) == (404, "ENTITY_NOT_FOUND")
    for lab_id in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        response = operator.get(f"/api/admin/quotas/ml-llm/{lab_id}")
        assert (response.status_code, response.json()["error_code"]) == (404, "ENTITY_NOT_FOUND")


def test_only_operator_tokens_with_the_plans_scope_may_read_or_reset(
    cast, gateway, make_key, llm, token_client
):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 1})
    _, full = make_key()
    assert authorize(gateway, full).json()["code"] == "allowed"
    own_lab_token = token_client([Scope.LABS, Scope.KEYS, Scope.AUTHORIZE], lab=cast.lab)
    signed_in = Client()
    signed_in.force_login(cast.alice)  # a member, even the lab's owner, is not an operator
    refused = {
        "no token": (Client(), 401),
        "a signed-in member": (signed_in, 401),
        "the end user's key": (key_client(full), 401),
        "an operator token without the plans scope": (token_client([Scope.LABS]), 403),
        "the lab's own token": (own_lab_token, 403),
    }
    urls = [quota_url("ml-llm", cast.lab), f"/api/admin/labs/{cast.lab.uuid}/usage/2027/1"]
    for who, (caller, status) in refused.items():
        answers = [caller.get(url).status_code for url in urls]
        answers.append(caller.delete(quota_url("ml-llm", cast.lab)).status_code)
        assert answers == [status] * 3, who
    assert authorize(gateway, full).json()["code"] == "quota_exceeded"  # nothing was reset


def test_redis_down_answers_503_and_resets_nothing(cast, llm, operator, settings):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 1})
    settings.REDIS_URL = NOWHERE
    settings.RATE_LIMIT_REDIS_TIMEOUT_SECONDS = 0.2
    for response in (
        operator.get(quota_url("ml-llm", cast.lab)),
        operator.delete(quota_url("ml-llm", cast.lab)),
    ):
        assert (response.status_code, response.json()["error_code"]) == (503, "QUOTAS_UNAVAILABLE")
    assert not QuotaReset.objects.exists()


def test_operators_see_and_reset_a_labs_quotas_in_the_admin(
    cast, gateway, make_key, llm, admin_client
):
    plan_with_quotas(cast.lab, cast.alpha, {None: 5, llm: 2})
    free = PlanSubscription.objects.get(lab=cast.lab).plan
    others = plans.plan_subscribe(lab=cast.charlie_lab, plan=free)
    _, full = make_key()
    authorize(gateway, full), authorize(gateway, full)
    subscription = PlanSubscription.objects.get(lab=cast.lab)
    page = admin_client.get(f"/admin/billing/plansubscription/{subscription.pk}/change/")
    assert "every service: 2 of 5 used; ml-llm: 2 of 2 used" in page.content.decode()
    response = admin_client.post(
        "/admin/billing/plansubscription/",
        {"action": "reset_quotas", "_selected_action": [subscription.pk, others.pk]},
        follow=True,
    )
    assert "Reset the request quotas of 2 subscription(s)" in response.content.decode()
    page = admin_client.get(f"/admin/billing/plansubscription/{subscription.pk}/change/")
    assert "every service: 0 of 5 used; ml-llm: 0 of 2 used" in page.content.decode()
    reset = subscription.quota_resets.order_by("scope")
    assert [(r.scope, r.period_index, r.by_user, r.by_token) for r in reset] == [
        ("*", 0, User.objects.get(is_superuser=True), None),
        ("ml-llm", 0, User.objects.get(is_superuser=True), None),
    ]  # who, and when
    assert "Request quota resets" in page.content.decode()
    assert authorize(gateway, full).json()["code"] == "allowed"


def test_the_schema_describes_the_admin_quota_routes(client):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    assert "/api/admin/quotas/{service}/{lab_id}" in schema["paths"]
    assert "/api/admin/labs/{lab_id}/usage/{year}/{month}" in schema["paths"]


def test_a_request_counted_before_a_reset_and_refused_after_it_gives_nothing_back(cast, llm):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 5})
    plan_quotas = selectors.plan_quotas(lab_id=cast.lab.pk)
    now = timezone.now()
    before = quotas.consume(plan_quotas, now)  # in flight when the operator resets
    assert quotas.reset(plan_quotas, "ml-llm", now)
    after = quotas.consume(plan_quotas, now)
    quotas.give_back(before)  # refused later (the cap, the credits)
    assert [q.used for q in quotas.left(plan_quotas, now)] == [1]  # `after` still counts
    quotas.give_back(after)
    assert [q.used for q in quotas.left(plan_quotas, now)] == [0]


def test_a_counter_left_by_the_first_release_as_a_string_does_not_block_authorize(
    cast, gateway, make_key, llm, operator, settings
):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 2})
    subscription = PlanSubscription.objects.get(lab=cast.lab)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(f"rl:{{p{subscription.uuid}}}:0:ml-llm", 1)  # its name and type then
    _, full = make_key()
    assert [authorize(gateway, full).json()["code"] for _ in range(3)] == [
        "allowed", "allowed", "quota_exceeded"
    ]  # fmt: skip
    assert operator.delete(quota_url("ml-llm", cast.lab)).status_code == 200


def test_the_subscription_admin_saves_with_its_resets_listed(cast, llm, operator, admin_client):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 2})
    operator.delete(quota_url("ml-llm", cast.lab))
    subscription = PlanSubscription.objects.get(lab=cast.lab)
    reset = subscription.quota_resets.get()
    url = f"/admin/billing/plansubscription/{subscription.pk}/change/"
    assert "Request quota resets" in admin_client.get(url).content.decode()
    response = admin_client.post(
        url,
        {
            "quota_resets-TOTAL_FORMS": "1", "quota_resets-INITIAL_FORMS": "1",
            "quota_resets-MIN_NUM_FORMS": "0", "quota_resets-MAX_NUM_FORMS": "1000",
            "quota_resets-0-id": reset.pk, "quota_resets-0-subscription": subscription.pk,
        },
    )  # fmt: skip
    assert response.status_code == 302  # saved as the page's Save button sends it
    assert subscription.quota_resets.get() == reset
    add = admin_client.get("/admin/billing/plansubscription/add/").content.decode()
    assert "quota_resets-TOTAL_FORMS" not in add  # nothing to list before it exists
