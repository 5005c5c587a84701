"""Plan request quotas: authorize counts each allowed request against the lab's plan (Redis,
per plan period), refuses with 402 `quota_exceeded` once none is left, and /api/quotas says
what is left."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from rest_framework.test import APIClient

from billing import plans
from billing.models import Plan
from keys.models import PlanQuota
from keys.services import key_revoke
from metering.cost import Tier
from metering.models import Job
from tests.keys.conftest import authorize
from tests.keys.test_concurrency import _authorize_all
from tests.keys.test_redis_down import NOWHERE
from tests.metering.test_reservations import priced_service

pytestmark = pytest.mark.django_db


def plan_with_quotas(lab, project, quotas: dict, period="monthly") -> Plan:
    """A monthly plan with `{service or None: requests}` quotas, and `lab` on it."""
    plan = Plan.objects.create(slug="free", name="Free", credits=Decimal("1"), period=period)
    for service, requests in quotas.items():
        PlanQuota.objects.create(plan=plan, service=service, requests=requests)
    plans.plan_subscribe(lab=lab, plan=plan, project=project)
    return plan


def key_client(full_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {full_key}")
    return client


def test_the_plan_allows_its_quota_of_requests_then_answers_402(cast, gateway, make_key, llm):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 3})
    _, full = make_key()
    _, other = make_key(name="second key")  # a quota is the lab's, shared by its keys
    assert [authorize(gateway, key).status_code for key in (full, other, full)] == [200] * 3
    response = authorize(gateway, other)
    body = response.json()
    assert (response.status_code, body["code"], body["allowed"]) == (402, "quota_exceeded", False)
    assert body["message"].startswith("The lab's plan allows 3 'ml-llm' requests a month")
    assert body["job_id"] is None and body["project"] == str(cast.alpha.uuid)
    assert Job.objects.count() == 3
    quotas = key_client(full).get("/api/quotas").json()
    assert (quotas["plan"], quotas["remainingRequests"], quotas["limits"]) == (
        "free", [{"ml-llm": 0}], [{"ml-llm": 3}]
    )  # fmt: skip


def test_the_every_service_quota_counts_all_services_and_the_tighter_one_refuses(
    cast, gateway, make_key, llm
):
    embed = priced_service("ml-embed", tiers=[Tier(0, None, Decimal(0), Decimal("0.001"))])
    plan_with_quotas(cast.lab, cast.alpha, {None: 4, llm: 3})
    _, full = make_key()
    codes = [authorize(gateway, full, service=s).json()["code"] for s in ["ml-llm"] * 4]
    assert codes == ["allowed"] * 3 + ["quota_exceeded"]  # ml-llm's own quota: 3
    assert authorize(gateway, full, service="ml-embed").json()["code"] == "allowed"
    response = authorize(gateway, full, service="ml-embed")
    assert response.json()["code"] == "quota_exceeded"  # every service together: 4
    assert "4 requests of every service a month" in response.json()["message"]
    client = key_client(full)
    assert client.get("/api/quotas").json()["remainingRequests"] == [{"*": 0}, {"ml-llm": 0}]
    assert client.get(f"/api/quotas/{embed.slug}").json()["remainingRequests"] == 0


def test_a_request_refused_after_its_quota_passed_gives_it_back(cast, gateway, make_key, llm):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 2})
    _, full = make_key(credit_limit="1")  # 100 units a credit
    response = authorize(gateway, full, units=500)
    assert (response.status_code, response.json()["code"]) == (402, "key_credit_limit")
    response = authorize(gateway, full, units=10**9)
    assert response.json()["code"] == "key_credit_limit"
    assert key_client(full).get("/api/quotas/ml-llm").json()["remainingRequests"] == 2
    assert [authorize(gateway, full).json()["code"] for _ in range(3)] == [
        "allowed", "allowed", "quota_exceeded"
    ]  # fmt: skip


def test_the_count_starts_again_when_the_plan_period_does(cast, gateway, make_key, llm):
    with time_machine.travel(datetime(2027, 1, 31, 10, tzinfo=UTC), tick=False):
        plan_with_quotas(cast.lab, cast.alpha, {llm: 1})
        _, full = make_key()
    with time_machine.travel(datetime(2027, 2, 28, 9, 59, tzinfo=UTC), tick=False):
        assert authorize(gateway, full).json()["code"] == "allowed"
        assert authorize(gateway, full).json()["code"] == "quota_exceeded"
        body = key_client(full).get("/api/quotas/ml-llm").json()
        assert body["periodEnd"] == "2027-02-28T10:00:00Z"
    with time_machine.travel(datetime(2027, 2, 28, 10, tzinfo=UTC), tick=False):
        assert authorize(gateway, full).json()["code"] == "allowed"  # period 1, from zero
        assert authorize(gateway, full).json()["code"] == "quota_exceeded"


def test_no_plan_or_a_plan_without_quotas_counts_nothing(cast, gateway, make_key, llm):
    _, full = make_key()
    assert key_client(full).get("/api/quotas").json() == {
        "plan": None, "periodStart": None, "periodEnd": None,
        "remainingRequests": [], "limits": [],
    }  # fmt: skip
    plan_with_quotas(cast.lab, cast.alpha, {})
    assert all(authorize(gateway, full).status_code == 200 for _ in range(5))
    body = key_client(full).get("/api/quotas/ml-llm").json()
    assert (body["plan"], body["remainingRequests"], body["limit"]) == ("free", None, None)


def test_an_ended_plan_takes_its_quotas_with_it(cast, gateway, make_key, llm):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 1})
    _, full = make_key()
    authorize(gateway, full)
    assert authorize(gateway, full).json()["code"] == "quota_exceeded"
    plans.plan_end(subscription=cast.lab.plan_subscriptions.get())
    assert authorize(gateway, full).json()["code"] == "allowed"


def test_quota_routes_refuse_bad_keys_and_unknown_services_in_the_error_shape(cast, make_key, llm):
    _, full = make_key()
    assert APIClient().get("/api/quotas").status_code == 401
    response = key_client("sk_nope_nothing").get("/api/quotas")
    assert (response.status_code, response.json()["details"]) == (401, {"code": "key_invalid"})
    response = key_client(full).get("/api/quotas/no-such-service")
    assert (response.status_code, response.json()["error_code"]) == (404, "ENTITY_NOT_FOUND")
    key, full = make_key(name="revoked")
    key_revoke(key=key, by=cast.alice)
    response = key_client(full).get("/api/quotas")
    assert (response.status_code, response.json()["details"]) == (401, {"code": "key_revoked"})


def test_the_outsiders_key_sees_only_his_own_labs_quotas(cast, make_key, llm):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 3})
    _, charlies = make_key(project=cast.charlie_lab.projects.get(), created_by=cast.charlie)
    assert key_client(charlies).get("/api/quotas").json()["plan"] is None
    assert key_client(charlies).get("/api/quotas/ml-llm").json()["remainingRequests"] is None


def test_redis_down_fails_closed_for_quotas_unless_limits_may_fail_open(
    cast, gateway, make_key, llm, settings
):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 1})
    _, full = make_key()  # no rate limits: only the quota needs Redis
    settings.REDIS_URL = NOWHERE
    settings.RATE_LIMIT_REDIS_TIMEOUT_SECONDS = 0.2
    response = authorize(gateway, full)
    assert (response.status_code, response.json()["code"]) == (503, "rate_limiter_unavailable")
    response = key_client(full).get("/api/quotas")
    assert (response.status_code, response.json()["error_code"]) == (503, "QUOTAS_UNAVAILABLE")
    assert Job.objects.count() == 0
    settings.RATE_LIMITS_FAIL_OPEN = True
    assert [authorize(gateway, full).status_code for _ in range(2)] == [200, 200]


@pytest.mark.django_db(transaction=True)
def test_thirty_concurrent_authorizes_against_a_quota_of_seven(cast, make_key, llm):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 7})
    _, full = make_key()
    codes = _authorize_all(full, 30, units=1)
    assert (codes.count("allowed"), codes.count("quota_exceeded")) == (7, 23)
    assert key_client(full).get("/api/quotas/ml-llm").json()["remainingRequests"] == 0


def test_operators_set_a_plans_quotas_in_the_admin(client, llm):
    from accounts.services import user_create

    operator = user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)
    client.force_login(operator)
    page = client.get("/admin/billing/plan/add/").content.decode()
    assert "Request quotas" in page
    form = {
        "name": "Free", "slug": "free", "description": "", "credits": "5", "period": "weekly",
        "rollover": "reset", "rollover_max": "", "category": "promotional", "priority": "10",
        "active": "on",
        "quotas-TOTAL_FORMS": "2", "quotas-INITIAL_FORMS": "0",
        "quotas-0-service": str(llm.pk), "quotas-0-requests": "100",
        "quotas-1-service": "", "quotas-1-requests": "500",
    }  # fmt: skip
    response = client.post("/admin/billing/plan/add/", form)
    assert response.status_code == 302, (
        response.context["adminform"].form.errors,
        [f.errors for f in response.context["inline_admin_formsets"][0].formset],
    )
    quotas = {q.service_id: q.requests for q in PlanQuota.objects.filter(plan__slug="free")}
    assert quotas == {llm.pk: 100, None: 500}


def test_members_see_their_labs_quotas_on_the_keys_page_and_outsiders_do_not(
    client, cast, gateway, make_key, llm
):
    plan_with_quotas(cast.lab, cast.alpha, {None: 10, llm: 3})
    _, full = make_key()
    authorize(gateway, full)
    client.force_login(cast.bob)
    page = client.get("/app/keys/").content.decode()
    assert 'data-testid="plan-quotas"' in page and "Alice Lab" in page
    assert "Every service: <strong>9</strong> of 10 left" in page
    assert "ml-llm: <strong>2</strong> of 3 left" in page
    client.force_login(cast.charlie)
    page = client.get("/app/keys/").content.decode()
    assert 'data-testid="plan-quotas"' not in page and "Alice Lab" not in page


def test_the_schema_describes_the_quota_routes(tmp_path):
    import yaml
    from django.core.management import call_command

    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--file", str(target))
    schema = yaml.safe_load(target.read_text())
    for path in ["/api/quotas", "/api/quotas/{service}"]:
        assert schema["paths"][path]["get"]["security"] == [{"endUserKey": []}]
    listed = schema["components"]["schemas"]["QuotasOut"]["properties"]
    assert {"plan", "periodStart", "periodEnd", "remainingRequests", "limits"} == set(listed)


@pytest.mark.parametrize("name", ["%00", "ml-llm%00", "x" * 300, "caf%C3%A9", "*"])
def test_odd_service_names_on_the_quota_route_are_404(make_key, llm, name):
    _, full = make_key()
    response = key_client(full).get(f"/api/quotas/{name}")
    assert (response.status_code, response.json()["error_code"]) == (404, "ENTITY_NOT_FOUND")


def test_a_plan_takes_one_every_service_quota_in_the_admin(client, llm):
    from accounts.services import user_create

    operator = user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)
    client.force_login(operator)
    form = {
        "name": "Free", "slug": "free", "description": "", "credits": "5", "period": "weekly",
        "rollover": "reset", "rollover_max": "", "category": "promotional", "priority": "10",
        "active": "on", "quotas-TOTAL_FORMS": "2", "quotas-INITIAL_FORMS": "0",
        "quotas-0-service": "", "quotas-0-requests": "100",
        "quotas-1-service": "", "quotas-1-requests": "500",
    }  # fmt: skip
    response = client.post("/admin/billing/plan/add/", form)
    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.non_form_errors() == ["Only one quota can be for every service."]
    assert not Plan.objects.exists()
    form.update({"quotas-TOTAL_FORMS": "1"})
    assert client.post("/admin/billing/plan/add/", form).status_code == 302
    plan = Plan.objects.get()
    [saved] = PlanQuota.objects.filter(plan=plan)
    form = {
        **form, "quotas-TOTAL_FORMS": "2", "quotas-INITIAL_FORMS": "1",
        "quotas-0-id": str(saved.pk), "quotas-0-plan": str(plan.pk),
        "quotas-1-plan": str(plan.pk),
    }  # fmt: skip
    response = client.post(f"/admin/billing/plan/{plan.pk}/change/", form)
    assert response.status_code == 200
    assert PlanQuota.objects.filter(plan=plan).count() == 1


def test_the_period_index_counts_months_on_the_start_calendar_whatever_the_time_zone():
    from zoneinfo import ZoneInfo

    start = datetime(2027, 1, 1, 2, tzinfo=UTC)
    at = datetime(2027, 2, 1, 4, tzinfo=UTC).astimezone(ZoneInfo("America/New_York"))
    assert plans.period_index_at(started_at=start, period="monthly", at=at) == 1


def test_the_keys_own_overview_shows_its_labs_plan_quotas(cast, gateway, make_key, llm):
    _, full = make_key()
    assert key_client(full).get("/api/v1/key").json()["plan_quotas"] is None
    plan_with_quotas(cast.lab, cast.alpha, {None: 10, llm: 3})
    authorize(gateway, full)
    overview = key_client(full).get("/api/v1/key").json()["plan_quotas"]
    assert overview["plan"] == "free" and overview["period_end"] > overview["period_start"]
    assert overview["quotas"] == [
        {"service": "*", "limit": 10, "remaining": 9},
        {"service": "ml-llm", "limit": 3, "remaining": 2},
    ]


def test_a_daily_plans_quota_counts_by_the_day_and_says_so(cast, gateway, make_key, llm):
    plan_with_quotas(cast.lab, cast.alpha, {llm: 1}, period="daily")
    _, full = make_key()
    assert authorize(gateway, full).status_code == 200
    refused = authorize(gateway, full).json()
    assert refused["message"].startswith("The lab's plan allows 1 'ml-llm' requests a day: ")
