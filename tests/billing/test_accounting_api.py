"""/api/accounting/: the reference's paths, bodies, envelopes, decimal formats and statuses."""

import uuid

import pytest

from accounts.models import Lab, Project
from billing import services
from billing.models import JournalEntry, LedgerAccount

VLAB = "1b3c5d7e-0000-4000-8000-000000000001"
PROJ = "1b3c5d7e-0000-4000-8000-000000000002"
PROJ_2 = "1b3c5d7e-0000-4000-8000-000000000003"
SYS = "1b3c5d7e-0000-4000-8000-0000000000ff"


@pytest.fixture
def gateway(token_client, db):
    return token_client(["accounting"])


@pytest.fixture
def funded(gateway):
    """The reference's accounts: a lab of 2000 with projects of 400 (100 reserved) and 500."""
    gateway.post("/api/accounting/account/system", {"id": SYS, "name": "sys"}, format="json")
    gateway.post(
        "/api/accounting/account/virtual-lab",
        {"id": VLAB, "name": "vlab", "balance": "3000"},
        format="json",
    )
    for pid, name in [(PROJ, "vlab/proj"), (PROJ_2, "vlab/proj2")]:
        gateway.post(
            "/api/accounting/account/project",
            {"id": pid, "name": name, "vlab_id": VLAB},
            format="json",
        )
    gateway.post(
        "/api/accounting/budget/assign",
        {"vlab_id": VLAB, "proj_id": PROJ, "amount": 500},
        format="json",
    )
    gateway.post(
        "/api/accounting/budget/assign",
        {"vlab_id": VLAB, "proj_id": PROJ_2, "amount": 500},
        format="json",
    )
    services.hold_create(
        project=Project.objects.get(uuid=PROJ), amount="100", job_uuid=uuid.uuid4()
    )
    return gateway


def post(client, path, body):
    return client.post(f"/api/accounting/{path}", body, format="json")


def test_create_accounts_and_read_balances_in_the_reference_format(funded):
    response = funded.get(f"/api/accounting/balance/virtual-lab/{VLAB}?include_projects=true")
    assert response.status_code == 200
    assert response.json() == {
        "message": "Balance for virtual-lab including projects",
        "data": {
            "vlab_id": VLAB,
            "balance": "2000.00",
            "projects": [
                {"proj_id": PROJ, "balance": "400.00", "reservation": "100.00"},
                {"proj_id": PROJ_2, "balance": "500.00", "reservation": "0.00"},
            ],
        },
    }
    plain = funded.get(f"/api/accounting/balance/virtual-lab/{VLAB}").json()
    assert plain == {
        "message": "Balance for virtual-lab",
        "data": {"vlab_id": VLAB, "balance": "2000.00"},
    }
    assert funded.get(f"/api/accounting/balance/project/{PROJ}").json() == {
        "message": "Balance for project",
        "data": {"proj_id": PROJ, "balance": "400.00", "reservation": "100.00"},
    }
    assert funded.get("/api/accounting/balance/system").json() == {
        "message": "Balance for system",
        "data": {"balance": "-3000.00"},
    }


def test_accounts_created_here_are_the_portals_labs_and_projects(funded):
    lab = Lab.objects.get(uuid=VLAB)
    assert lab.name == "vlab"
    assert lab.memberships.count() == 0
    assert set(lab.projects.values_list("name", flat=True)) == {"vlab/proj", "vlab/proj2"}


def test_virtual_lab_echoes_its_balance_as_given(gateway):
    response = post(gateway, "account/virtual-lab", {"id": VLAB, "name": "v", "balance": 1000.0})
    assert response.status_code == 201
    assert response.json() == {
        "message": "Virtual lab created",
        "data": {"id": VLAB, "name": "v", "balance": "1000.0"},
    }
    zero = post(gateway, "account/virtual-lab", {"id": str(uuid.uuid4()), "name": "z"})
    assert zero.json()["data"]["balance"] == "0"


def test_duplicates_are_409_not_500(funded):
    assert post(funded, "account/system", {"id": str(uuid.uuid4()), "name": "x"}).status_code == 409
    duplicate_lab = post(funded, "account/virtual-lab", {"id": VLAB, "name": "again"})
    assert duplicate_lab.status_code == 409
    assert duplicate_lab.json() == {
        "error_code": "CONFLICT",
        "message": "Virtual lab already exists",
        "details": None,
    }
    duplicate_project = post(funded, "account/project", {"id": PROJ, "name": "p", "vlab_id": VLAB})
    assert duplicate_project.json()["message"] == "Project already exists"
    unknown_parent = post(
        funded,
        "account/project",
        {"id": str(uuid.uuid4()), "name": "p", "vlab_id": str(uuid.uuid4())},
    )
    assert unknown_parent.status_code == 404
    assert unknown_parent.json()["message"] == "Virtual lab not found"


def test_budget_operations_move_money_and_answer_with_null_data(funded):
    cases = [
        ("budget/top-up", {"vlab_id": VLAB, "amount": "10.5"}, "Top-up operation executed"),
        ("budget/assign", {"vlab_id": VLAB, "proj_id": PROJ, "amount": 10}, "Assign budget operation executed"),
        ("budget/reverse", {"vlab_id": VLAB, "proj_id": PROJ, "amount": "5"}, "Reverse budget operation executed"),
        ("budget/move", {"vlab_id": VLAB, "debited_from": PROJ, "credited_to": PROJ_2, "amount": "5"}, "Move budget operation executed"),
        ("budget/grant", {"proj_id": PROJ_2, "amount": "1"}, "Grant budget operation executed"),
    ]  # fmt: skip
    for path, body, message in cases:
        response = post(funded, path, body)
        assert response.status_code == 200, (path, response.json())
        assert response.json() == {"message": message, "data": None}
    state = funded.get(f"/api/accounting/balance/virtual-lab/{VLAB}?include_projects=true").json()
    assert state["data"]["balance"] == "2005.50"
    assert [p["balance"] for p in state["data"]["projects"]] == ["400.00", "506.00"]


def test_deplete_returns_the_total_and_is_idempotent(funded):
    response = post(funded, "budget/deplete/project", {"proj_id": PROJ})
    assert response.json() == {
        "message": "Deplete project operation executed",
        "data": {"total_amount": "400.00"},
    }
    whole = post(funded, "budget/deplete/virtual-lab", {"vlab_id": VLAB})
    assert whole.json()["data"] == {"total_amount": "2500.00"}
    assert post(funded, "budget/deplete/virtual-lab", {"vlab_id": VLAB}).json()["data"] == {
        "total_amount": "0.00"
    }
    # The reservation is not touched.
    assert (
        funded.get(f"/api/accounting/balance/project/{PROJ}").json()["data"]["reservation"]
        == "100.00"
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("budget/assign", {"vlab_id": VLAB, "proj_id": PROJ, "amount": "2000.01"}, 400, "Insufficient funds in the virtual-lab account"),
        ("budget/reverse", {"vlab_id": VLAB, "proj_id": PROJ, "amount": "400.01"}, 400, "Insufficient funds in the project account"),
        ("budget/move", {"vlab_id": VLAB, "debited_from": PROJ, "credited_to": PROJ, "amount": "1"}, 400, "The debited and credited accounts must be different"),
        ("budget/move", {"vlab_id": VLAB, "debited_from": PROJ, "credited_to": PROJ_2, "amount": "400.01"}, 400, "Insufficient funds in the debited account"),
        ("budget/assign", {"vlab_id": VLAB, "proj_id": str(uuid.uuid4()), "amount": "1"}, 404, "Account not found"),
        ("budget/top-up", {"vlab_id": str(uuid.uuid4()), "amount": "1"}, 404, "Virtual lab not found"),
        ("budget/grant", {"proj_id": str(uuid.uuid4()), "amount": "1"}, 404, "Account not found"),
        ("budget/deplete/project", {"proj_id": str(uuid.uuid4())}, 404, "Project not found"),
    ],
)  # fmt: skip
def test_budget_errors_in_the_reference_shape_and_nothing_written(
    funded, path, body, status, message
):
    before = JournalEntry.objects.count()
    response = post(funded, path, body)
    assert response.status_code == status
    assert response.json() == {
        "error_code": "INVALID_REQUEST" if status == 400 else "ENTITY_NOT_FOUND",
        "message": message,
        "details": None,
    }
    assert JournalEntry.objects.count() == before


def test_a_project_of_another_lab_is_refused(funded):
    other = str(uuid.uuid4())
    post(funded, "account/virtual-lab", {"id": other, "name": "other"})
    response = post(funded, "budget/assign", {"vlab_id": other, "proj_id": PROJ, "amount": "1"})
    assert response.status_code == 400
    assert response.json()["message"] == "The project doesn't belong to the virtual-lab"


@pytest.mark.parametrize(
    ("amount", "kind"),
    [("0", "greater_than"), ("-1", "greater_than"), ("abc", "decimal_parsing"),
     ("1.0000001", "decimal_parsing"), ("NaN", "decimal_parsing"), (None, "null")],
)  # fmt: skip
def test_bad_amounts_are_422_with_details_and_nothing_written(funded, amount, kind):
    before = JournalEntry.objects.count()
    response = post(funded, "budget/top-up", {"vlab_id": VLAB, "amount": amount})
    assert response.status_code == 422
    body = response.json()
    assert body["error_code"] == "INVALID_REQUEST"
    assert body["message"] == "Validation error"
    assert body["details"][0]["loc"] == ["body", "amount"]
    assert body["details"][0]["type"] == kind
    assert JournalEntry.objects.count() == before


def test_extra_fields_missing_fields_bad_uuids_and_bad_json_are_422(funded):
    extra = post(funded, "budget/top-up", {"vlab_id": VLAB, "amount": "1", "note": "x"})
    assert extra.status_code == 422
    assert extra.json()["details"] == [
        {
            "type": "extra_forbidden",
            "loc": ["body", "note"],
            "msg": "Extra inputs are not permitted",
        }
    ]
    assert post(funded, "budget/top-up", {"amount": "1"}).status_code == 422
    assert post(funded, "budget/top-up", {"vlab_id": "nope", "amount": "1"}).status_code == 422
    assert funded.get("/api/accounting/balance/project/not-a-uuid").status_code == 422
    bad_json = funded.post(
        "/api/accounting/budget/top-up", data="{", content_type="application/json"
    )
    assert bad_json.status_code == 422
    assert bad_json.json()["details"][0]["type"] == "json_invalid"


def test_idempotency_key_header_replays_without_moving_money_twice(funded):
    for _ in range(3):
        response = funded.post(
            "/api/accounting/budget/top-up",
            {"vlab_id": VLAB, "amount": "7"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="topup-1",
        )
        assert response.status_code == 200
    state = funded.get(f"/api/accounting/balance/virtual-lab/{VLAB}").json()
    assert state["data"]["balance"] == "2007.00"
    conflict = funded.post(
        "/api/accounting/budget/top-up",
        {"vlab_id": VLAB, "amount": "8"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="topup-1",
    )
    assert conflict.status_code == 409


def test_it_needs_a_token_with_the_accounting_scope(funded, token_client, api_client, cast):
    assert api_client.get("/api/accounting/balance/system").status_code == 401
    api_client.force_login(cast.alice)  # people use the portal, not this surface
    assert api_client.get("/api/accounting/balance/system").status_code == 401
    assert token_client(["usage"]).get("/api/accounting/balance/system").status_code == 403


def test_a_lab_bound_token_reads_and_moves_only_its_own_lab(funded, token_client, cast):
    alice_lab = cast.lab
    services.lab_top_up(lab=alice_lab, amount="50")
    charlie = token_client(["accounting"], lab=cast.charlie_lab)
    for path in [
        f"/api/accounting/balance/virtual-lab/{alice_lab.uuid}",
        f"/api/accounting/balance/project/{cast.alpha.uuid}",
        f"/api/accounting/balance/virtual-lab/{VLAB}",
    ]:
        response = charlie.get(path)
        assert response.status_code == 404, path
    moved = post(
        charlie,
        "budget/assign",
        {"vlab_id": str(alice_lab.uuid), "proj_id": str(cast.alpha.uuid), "amount": "1"},
    )
    assert moved.status_code == 404
    assert (
        post(
            charlie, "budget/top-up", {"vlab_id": str(cast.charlie_lab.uuid), "amount": "1"}
        ).status_code
        == 403
    )
    assert charlie.get("/api/accounting/balance/system").status_code == 403
    own = charlie.get(f"/api/accounting/balance/virtual-lab/{cast.charlie_lab.uuid}")
    assert own.status_code == 200
    services.lab_top_up(lab=cast.charlie_lab, amount="5")
    own_assign = post(
        charlie,
        "budget/assign",
        {
            "vlab_id": str(cast.charlie_lab.uuid),
            "proj_id": str(cast.charlie_lab.projects.get().uuid),
            "amount": "5",
        },
    )
    assert own_assign.status_code == 200
    assert JournalEntry.objects.filter(actor_token__lab=cast.charlie_lab).count() == 1


@pytest.mark.parametrize(
    ("flag", "listed"), [("on", True), ("t", True), ("off", False), ("n", False)]
)
def test_include_projects_takes_the_references_boolean_words(funded, flag, listed):
    body = funded.get(f"/api/accounting/balance/virtual-lab/{VLAB}?include_projects={flag}").json()
    assert ("projects" in body["data"]) is listed
    assert (
        funded.get(f"/api/accounting/balance/virtual-lab/{VLAB}?include_projects=maybe").status_code
        == 422
    )


def test_a_project_name_of_the_full_length_opens_its_accounts(funded):
    """Its reservation account is named after it plus a suffix: a name of 189-200 characters
    was a 500 (found by tests/api/test_fuzz.py)."""
    project_id = str(uuid.uuid4())
    body = {"id": project_id, "name": "x" * 200, "vlab_id": VLAB}
    assert post(funded, "account/project", body).status_code == 201
    names = LedgerAccount.objects.filter(project__uuid=project_id).values_list("name", flat=True)
    assert sorted(len(name) for name in names) == [200, 200]
    assert (
        post(
            funded, "account/project", {**body, "id": str(uuid.uuid4()), "name": "x" * 201}
        ).status_code
        == 422
    )
