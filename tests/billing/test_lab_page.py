"""The lab page through the cast: owners move budget, members only look, outsiders get 404."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services
from billing.models import JournalEntry
from billing.selectors import lab_balance


@pytest.fixture
def funded(cast):
    services.lab_top_up(lab=cast.lab, amount="100", expires_at=timezone.now() + timedelta(days=9))
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="30")
    return cast


def budget_post(client, cast, **data):
    return client.post(f"/app/labs/{cast.lab.uuid}/budget/", data)


@pytest.mark.django_db
def test_members_see_balance_grants_and_project_budgets(client, funded):
    client.force_login(funded.bob)
    page = client.get(f"/app/labs/{funded.lab.uuid}/").content.decode()
    assert 'data-testid="lab-balance">70.00<' in page
    assert "30.00" in page  # Alpha's budget
    assert "Paid" in page and "active" in page  # the grant, with its expiry
    assert (timezone.now() + timedelta(days=9)).strftime("%Y-%m-%d") in page
    assert "Move budget" not in page  # a member sees no forms


@pytest.mark.django_db
def test_owner_assigns_reverses_and_moves(client, funded):
    client.force_login(funded.alice)
    alpha, beta = str(funded.alpha.uuid), str(funded.beta.uuid)
    assert (
        budget_post(client, funded, operation="assign", project=beta, amount="20").status_code
        == 302
    )
    assert (
        budget_post(client, funded, operation="reverse", project=alpha, amount="5.5").status_code
        == 302
    )
    assert (
        budget_post(
            client, funded, operation="move", project=alpha, to_project=beta, amount="4.5"
        ).status_code
        == 302
    )
    state = lab_balance(funded.lab)
    assert state.balance == Decimal("55.5")
    assert [(p.project.name, p.balance) for p in state.projects] == [
        ("Alpha", Decimal("20")),
        ("Beta", Decimal("24.5")),
    ]
    page = client.get(f"/app/labs/{funded.lab.uuid}/").content.decode()
    assert "Moved 4.5 credits from Alpha to Beta." in page
    assert "alice@example.com" in page  # the history says who
    assert "<td>Move budget</td>" in page and "<td>Alpha → Beta</td>" in page  # and where
    assert JournalEntry.objects.filter(actor_user=funded.alice).count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"operation": "assign", "amount": "70.01"}, "The lab&#x27;s balance has less than 70.01 credits that can be spent now."),
        ({"operation": "reverse", "amount": "30.01"}, "Alpha has less than 30.01 credits that can be spent now."),
        ({"operation": "move", "amount": "30.01", "to_project": "beta"}, "Alpha has less than 30.01 credits that can be spent now."),
        ({"operation": "assign", "amount": "0"}, "Amount must be greater than 0"),
        ({"operation": "assign", "amount": "-3"}, "Amount must be greater than 0"),
        ({"operation": "assign", "amount": "ten"}, "Amount must be a number"),
        ({"operation": "assign", "amount": "1,5"}, "Amount must be a number"),  # not guessed at
        ({"operation": "assign", "amount": "1,000"}, "less than 1000 credits"),  # read as 1000
        ({"operation": "assign", "amount": "1.0000001"}, "at most 6 decimal places"),
        ({"operation": "move", "amount": "1", "to_project": "alpha"}, "Choose another project than the one the credits leave."),
        ({"operation": "move", "amount": "1"}, "Choose the project that receives the credits."),
        ({"operation": "steal", "amount": "1"}, "Select a valid choice"),
    ],
)  # fmt: skip
def test_bad_input_is_a_form_error_and_writes_nothing(client, funded, data, error):
    client.force_login(funded.alice)
    data = {"project": str(funded.alpha.uuid), **data}
    if data.get("to_project") in ("alpha", "beta"):
        data["to_project"] = str(getattr(funded, data["to_project"]).uuid)
    before = JournalEntry.objects.count()
    response = budget_post(client, funded, **data)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert JournalEntry.objects.count() == before


@pytest.mark.django_db
def test_a_project_of_another_lab_is_not_a_choice(client, funded):
    client.force_login(funded.alice)
    other = funded.charlie_lab.projects.get()
    response = budget_post(client, funded, operation="assign", project=str(other.uuid), amount="1")
    assert response.status_code == 400
    assert lab_balance(funded.charlie_lab).projects[0].balance == 0


@pytest.mark.django_db
def test_a_member_cannot_move_budget(client, funded):
    client.force_login(funded.bob)
    before = JournalEntry.objects.count()
    response = budget_post(
        client, funded, operation="assign", project=str(funded.beta.uuid), amount="1"
    )
    assert response.status_code == 403
    assert JournalEntry.objects.count() == before


@pytest.mark.django_db
def test_the_outsider_can_neither_see_nor_move_the_money(client, funded):
    client.force_login(funded.charlie)
    page = client.get(f"/app/labs/{funded.lab.uuid}/")
    assert page.status_code == 404
    assert "70.00" not in page.content.decode()
    before = JournalEntry.objects.count()
    response = budget_post(
        client, funded, operation="reverse", project=str(funded.alpha.uuid), amount="30"
    )
    assert response.status_code == 404
    assert JournalEntry.objects.count() == before
