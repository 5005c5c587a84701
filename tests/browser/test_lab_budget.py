import pytest

from billing import services
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page, live_server, email):
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.locator("main").get_by_role("button", name="Sign In").click()
    page.wait_for_url("**/app/")


def test_owner_assigns_budget_and_sees_a_shortfall_as_a_form_error(page, live_server, cast):
    services.lab_top_up(lab=cast.lab, amount="50")
    sign_in(page, live_server, "alice@example.com")
    page.goto(f"{live_server.url}/app/labs/{cast.lab.uuid}/")
    assign = page.locator("form[data-operation=assign]")
    assign.locator("select[name=project]").select_option(label="Beta")
    assign.locator("input[name=amount]").fill("12.50")
    assign.get_by_role("button", name="Assign").click()
    assert page.get_by_text("Assigned 12.50 credits to Beta.").is_visible()
    assert page.get_by_test_id("lab-balance").inner_text() == "37.50"
    assert (
        page.locator(f"tr[data-project='{cast.beta.uuid}']").inner_text().split("\t")[1] == "12.50"
    )

    assign = page.locator("form[data-operation=assign]")
    assign.locator("input[name=amount]").fill("1000")
    assign.get_by_role("button", name="Assign").click()
    assert (
        page.get_by_role("alert").inner_text()
        == "The lab's balance has less than 1000 credits that can be spent now."
    )
    assert page.get_by_test_id("lab-balance").inner_text() == "37.50"


def test_member_sees_balances_but_no_budget_forms(page, live_server, cast):
    services.lab_top_up(lab=cast.lab, amount="50")
    sign_in(page, live_server, "bob@example.com")
    page.goto(f"{live_server.url}/app/labs/{cast.lab.uuid}/")
    assert page.get_by_test_id("lab-balance").inner_text() == "50.00"
    assert page.locator("form[data-operation]").count() == 0


def test_removing_a_member_asks_first_and_names_who(page, live_server, cast):
    sign_in(page, live_server, "alice@example.com")
    page.goto(f"{live_server.url}/app/labs/{cast.lab.uuid}/")
    bob = page.locator(f"tr[data-member='{cast.bob.uuid}']")
    confirm = bob.get_by_role("button", name="Remove bob@example.com")
    assert not confirm.is_visible()  # one click only opens the question
    bob.get_by_text("Remove", exact=True).click()
    assert bob.get_by_text("The API keys they made in its projects stop working.").is_visible()
    confirm.click()
    assert page.get_by_text("Removed bob@example.com from Alice Lab.").is_visible()
    assert page.locator(f"tr[data-member='{cast.bob.uuid}']").count() == 0
