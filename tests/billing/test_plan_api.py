"""Plans over the API: operator tokens read plans and put labs on them; nobody else can."""

import uuid
from decimal import Decimal

import pytest
import yaml
from django.core.management import call_command

from accounts.errors import InvalidScopeError
from accounts.models import Scope
from accounts.services import service_token_create
from billing.models import Grant, GrantSource, JournalEntry, Plan, PlanSubscription
from billing.selectors import lab_balance

pytestmark = pytest.mark.django_db

D = Decimal


@pytest.fixture
def starter(db) -> Plan:
    return Plan.objects.create(slug="starter", name="Starter", credits=D("10"), period="monthly")


@pytest.fixture
def operator(token_client):
    return token_client([Scope.PLANS])


def plan_url(lab) -> str:
    return f"/api/v1/labs/{lab.uuid}/plan"


def test_an_operator_token_puts_a_lab_on_a_plan_reads_it_and_ends_it(cast, starter, operator):
    response = operator.put(
        plan_url(cast.lab), {"plan": "starter", "project": str(cast.beta.uuid)}, format="json"
    )
    body = response.json()
    assert response.status_code == 200, body
    assert (body["lab"], body["project"], body["plan"]["slug"]) == (
        str(cast.lab.uuid), str(cast.beta.uuid), "starter"
    )  # fmt: skip
    assert (body["period_credits"], body["period_credits_left"], body["ended_at"]) == (
        "10.000000", "10.000000", None
    )  # fmt: skip
    assert lab_balance(cast.lab).projects[1].balance == D("10")  # Beta
    entry = JournalEntry.objects.get(type="grant")
    assert entry.actor_token is not None  # the ledger says which token granted it
    # The same request again changes nothing and grants nothing.
    again = operator.put(
        plan_url(cast.lab), {"plan": "starter", "project": str(cast.beta.uuid)}, format="json"
    )
    assert again.json() == body
    assert Grant.objects.filter(source=GrantSource.PLAN).count() == 1
    assert operator.get(plan_url(cast.lab)).json() == body
    ended = operator.delete(plan_url(cast.lab))
    assert ended.status_code == 200 and ended.json()["ended_at"] is not None
    subscription = PlanSubscription.objects.get(lab=cast.lab)
    assert subscription.created_by_token == subscription.ended_by_token == entry.actor_token
    assert (subscription.created_by, subscription.ended_by) == (None, None)
    response = operator.get(plan_url(cast.lab))
    assert (response.status_code, response.json()["message"]) == (404, "The lab is on no plan")
    assert operator.delete(plan_url(cast.lab)).status_code == 404


def test_without_a_project_the_credits_go_to_the_default_project(cast, starter, operator):
    response = operator.put(plan_url(cast.charlie_lab), {"plan": "starter"}, format="json")
    assert response.status_code == 200
    assert response.json()["project"] == str(cast.charlie_lab.projects.get().uuid)


def test_plans_are_listed_for_operator_tokens(starter, operator):
    Plan.objects.create(
        slug="pro", name="Pro", credits=D("100.5"), period="weekly", rollover="carry",
        rollover_max=D("50"), active=False,
    )  # fmt: skip
    plans = operator.get("/api/v1/plans").json()
    assert [(p["slug"], p["credits"], p["rollover_max"], p["active"]) for p in plans] == [
        ("pro", "100.500000", "50.000000", False), ("starter", "10.000000", None, True)
    ]  # fmt: skip


def test_a_trial_says_how_many_periods_it_lasts_and_that_its_last_does_not_renew(cast, operator):
    Plan.objects.create(slug="trial", name="Trial", credits=D("5"), period="weekly", periods=1)
    listed = operator.get("/api/v1/plans").json()
    assert [(p["slug"], p["periods"]) for p in listed] == [("trial", 1)]
    body = operator.put(plan_url(cast.lab), {"plan": "trial"}, format="json").json()
    assert (body["plan"]["periods"], body["renews"]) == (1, False)
    Plan.objects.filter(slug="trial").update(periods=None)  # operators may lift the term
    assert operator.get(plan_url(cast.lab)).json()["renews"] is True


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "INVALID_REQUEST"),
        ({"plan": "starter", "extra": 1}, 400, "INVALID_REQUEST"),
        ({"plan": 12}, 404, "ENTITY_NOT_FOUND"),  # no plan "12"
        ({"plan": "starter", "project": "not-a-uuid"}, 400, "INVALID_REQUEST"),
        ({"plan": "starter", "project": 1}, 400, "INVALID_REQUEST"),
        ({"plan": "nope"}, 404, "ENTITY_NOT_FOUND"),
        ({"plan": "old"}, 400, "INVALID_REQUEST"),  # inactive
        ({"plan": "starter", "project": "charlie"}, 400, "INVALID_REQUEST"),  # another lab's
        ({"plan": "starter", "project": str(uuid.uuid4())}, 400, "INVALID_REQUEST"),
        ("[]", 400, "INVALID_REQUEST"),
    ],
)
def test_bad_requests_answer_in_the_error_shape_and_write_nothing(
    cast, starter, operator, body, status, code
):
    Plan.objects.create(slug="old", name="Old", credits=D("1"), period="weekly", active=False)
    if isinstance(body, dict) and body.get("project") == "charlie":
        body["project"] = str(cast.charlie_lab.projects.get().uuid)
    if isinstance(body, str):
        response = operator.put(plan_url(cast.lab), body, content_type="application/json")
    else:
        response = operator.put(plan_url(cast.lab), body, format="json")
    assert (response.status_code, response.json()["error_code"]) == (status, code)
    assert not PlanSubscription.objects.exists() and not JournalEntry.objects.exists()


def test_unknown_labs_are_404(starter, operator):
    for lab_id in [uuid.uuid4(), "not-a-uuid"]:
        response = operator.put(f"/api/v1/labs/{lab_id}/plan", {"plan": "starter"}, format="json")
        assert (response.status_code, response.json()["error_code"]) == (404, "ENTITY_NOT_FOUND")


def test_only_operator_tokens_with_the_plans_scope_manage_plans(
    cast, starter, token_client, client, api_client
):
    with pytest.raises(InvalidScopeError, match="operator tokens"):
        service_token_create(name="lab's own", scopes=[Scope.PLANS], lab=cast.lab)
    others = [
        token_client([Scope.LABS, Scope.KEYS, Scope.ACCOUNTING]),  # no plans scope
        token_client([Scope.LABS], lab=cast.lab),
        api_client,  # nobody
    ]
    for other in others:
        for response in [
            other.get("/api/v1/plans"),
            other.put(plan_url(cast.lab), {"plan": "starter"}, format="json"),
            other.get(plan_url(cast.lab)),
        ]:
            assert response.status_code in (401, 403)
    client.force_login(cast.alice)  # a lab owner's session is no token
    assert client.put(plan_url(cast.lab), {"plan": "starter"}).status_code in (401, 403)
    assert not PlanSubscription.objects.exists()


def test_the_admin_refuses_a_lab_bound_token_with_the_plans_scope(client, cast):
    from accounts.services import user_create

    operator = user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)
    client.force_login(operator)
    response = client.post(
        "/admin/accounts/servicetoken/add/",
        {"name": "lab bot", "scopes": ["plans", "labs"], "lab": cast.lab.pk},
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["scopes"] == [
        "plans: for operator tokens only (leave the lab empty)."
    ]


def test_the_schema_describes_the_plan_routes(tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--file", str(target))
    paths = yaml.safe_load(target.read_text())["paths"]
    assert set(paths["/api/v1/labs/{lab_id}/plan"]) == {"get", "put", "delete"}
    assert set(paths["/api/v1/plans"]) == {"get"}


def test_a_retry_grants_nothing_even_without_the_project_or_after_the_plan_was_retired(
    cast, starter, operator
):
    url = plan_url(cast.lab)
    first = operator.put(url, {"plan": "starter", "project": str(cast.beta.uuid)}, format="json")
    assert operator.put(url, {"plan": "starter"}, format="json").json() == first.json()
    Plan.objects.filter(pk=starter.pk).update(active=False)
    again = operator.put(url, {"plan": "starter"}, format="json")
    retired = {**first.json(), "plan": {**first.json()["plan"], "active": False}}
    assert (again.status_code, again.json()) == (200, retired)
    assert Grant.objects.filter(source=GrantSource.PLAN).count() == 1
    response = operator.put(plan_url(cast.charlie_lab), {"plan": "starter"}, format="json")
    assert response.json()["message"] == "This plan is not offered any more"


def test_a_lab_bound_token_that_holds_the_plans_scope_anyway_is_refused(cast, starter):
    from accounts.models import ServiceToken

    token, plain = service_token_create(name="bot", scopes=[Scope.LABS], lab=cast.lab)
    ServiceToken.objects.filter(pk=token.pk).update(scopes=[Scope.PLANS])  # by hand, in SQL
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plain}")
    assert client.get("/api/v1/plans").status_code == 403
    assert client.put(plan_url(cast.lab), {"plan": "starter"}, format="json").status_code == 403
    assert not PlanSubscription.objects.exists()
