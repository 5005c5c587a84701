import re
from decimal import Decimal

import pytest
from django.core import mail

from billing.models import Plan

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-passphrase-42"


def sign_up_and_confirm(page, live_server, email):
    page.goto(f"{live_server.url}/")
    page.locator("nav").get_by_text("Sign up").click()
    page.fill("input[name=email]", email)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.locator("main").get_by_role("button", name="Sign Up").click()
    page.wait_for_url("**/accounts/confirm-email/")

    (message,) = mail.outbox
    assert message.to == [email]
    link = re.search(r"https?://\S+/accounts/confirm-email/\S+/", message.body).group(0)
    page.goto(link)
    page.locator("main").get_by_role("button", name="Confirm").click()
    page.wait_for_url("**/app/")  # confirming in the browser that signed up signs in


def test_sign_up_verify_log_in_and_see_the_personal_lab(page, live_server):
    sign_up_and_confirm(page, live_server, "frank@example.com")
    card = page.locator(".lab-card")
    assert card.count() == 1
    assert "frank's lab" in card.inner_text()
    assert "personal" in card.inner_text()
    assert "Default" in card.inner_text()


def test_a_new_user_starts_on_the_default_plan_with_its_credits(page, live_server):
    Plan.objects.create(
        slug="starter", name="Starter", credits=Decimal("10"), period="monthly", is_default=True
    )
    sign_up_and_confirm(page, live_server, "grace@example.com")
    page.goto(f"{live_server.url}/app/billing/")
    plan = page.get_by_test_id("plan")
    assert "Plan: Starter" in plan.inner_text()
    assert page.get_by_test_id("plan-left").inner_text() == "10.00"
    default = page.locator("tr[data-project]", has_text="Default")
    assert "10.00" in default.inner_text()


def test_a_wrong_password_shows_a_form_error(page, live_server):
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=login]", "nobody@example.com")
    page.fill("input[name=password]", "wrong-password-123")
    page.locator("main").get_by_role("button", name="Sign In").click()
    assert page.get_by_text("not correct").is_visible()
    assert page.url.endswith("/accounts/login/")


@pytest.mark.parametrize("path", ["/", "/accounts/login/", "/accounts/signup/"])
def test_pages_fit_a_phone_screen(phone_page, live_server, path):
    phone_page.goto(f"{live_server.url}{path}")
    overflow = phone_page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    # Vendored styles loaded (no CDN): Pico sets the root font family.
    assert phone_page.evaluate("getComputedStyle(document.body).fontFamily") != "Times New Roman"
