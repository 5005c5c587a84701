import pytest
from django.core import mail

from billing import recharge_trigger, stripe_gateway
from config.celery import app
from tests.browser.test_lab_budget import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def offline(settings):
    """Test mode, and the receipt task run in the server's thread rather than on the broker."""
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""
    settings.STRIPE_OFFLINE_TEST_MODE = True
    recharge_trigger.targets_forget()
    assert stripe_gateway.offline()
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = eager


def test_a_member_tops_up_in_test_mode_and_sees_balance_and_receipt(
    page, live_server, cast, offline
):
    sign_in(page, live_server, "alice@example.com")
    page.locator(f"article[data-lab='{cast.lab.uuid}']").get_by_role(
        "link", name="Billing & top-up"
    ).click()
    assert page.get_by_test_id("test-mode-banner").is_visible()
    assert page.get_by_test_id("billing-balance").inner_text() == "0.00"

    form = page.get_by_test_id("topup-form")
    form.locator("input[name=amount]").fill("4.999")
    form.get_by_role("button", name="Continue to the test checkout").click()
    assert "at most 2 decimal places" in page.get_by_test_id("topup-errors").inner_text()

    form = page.get_by_test_id("topup-form")
    form.locator("input[name=amount]").fill("")
    form.get_by_label("50 USD").check()
    form.get_by_role("button", name="Continue to the test checkout").click()
    page.wait_for_url("**/test-checkout/")
    assert "TEST MODE" in page.get_by_test_id("test-mode-banner").inner_text()
    page.get_by_role("button", name="Pay (test)").click()

    page.wait_for_url(f"**/app/labs/{cast.lab.uuid}/billing/")
    assert page.get_by_text("Test payment done: 50.00 credits added.").is_visible()
    assert page.get_by_test_id("billing-balance").inner_text() == "50.00"
    history = page.get_by_test_id("topup-history")
    assert "50.00 USD" in history.inner_text()
    assert history.get_by_test_id("topup-status").first.inner_text() == "Paid"
    history.get_by_test_id("receipt-link").first.click()
    receipt = page.get_by_test_id("receipt")
    assert "50.00 USD" in receipt.inner_text() and "test mode" in receipt.inner_text()
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["alice@example.com"]


def test_the_outsider_gets_not_found_for_another_labs_billing(page, live_server, cast, offline):
    sign_in(page, live_server, "charlie@example.com")
    response = page.goto(f"{live_server.url}/app/labs/{cast.lab.uuid}/billing/")
    assert response.status == 404
    page.goto(f"{live_server.url}/app/billing/")
    page.wait_for_url(f"**/app/labs/{cast.charlie_lab.uuid}/billing/")
    assert "Alice Lab" not in page.content()


def test_an_owner_sets_a_low_balance_alert_and_removes_it(page, live_server, cast):
    from billing.models import BalanceAlert

    sign_in(page, live_server, "alice@example.com")
    page.goto(f"{live_server.url}/app/labs/{cast.lab.uuid}/billing/")
    form = page.get_by_test_id("alert-form")
    form.locator("select[name=target]").select_option(label="Project Alpha")
    form.locator("input[name=threshold]").fill("many")
    form.get_by_role("button", name="Add alert").click()
    assert "Amount must be a number" in page.get_by_role("alert").inner_text()
    assert not BalanceAlert.objects.exists()
    form = page.get_by_test_id("alert-form")
    form.locator("input[name=threshold]").fill("25")
    form.get_by_role("button", name="Add alert").click()
    alert = BalanceAlert.objects.get()
    row = page.locator(f"tr[data-alert='{alert.uuid}']")
    assert "Project Alpha" in row.inner_text() and "Armed" in row.inner_text()
    row.get_by_role("button", name="Remove").click()
    page.get_by_text("Alert removed.").wait_for()
    assert not BalanceAlert.objects.exists()


def test_a_top_up_and_its_receipt_fit_a_phone_screen(phone_page, live_server, cast, offline):
    """Nothing on the lab's pages widens a phone's screen (a receipt's ids used to)."""
    page = phone_page
    sign_in(page, live_server, "alice@example.com")
    page.goto(f"{live_server.url}/app/labs/{cast.lab.uuid}/billing/")
    form = page.get_by_test_id("topup-form")
    form.get_by_label("50 USD").check()
    form.get_by_role("button", name="Continue to the test checkout").click()
    page.wait_for_url("**/test-checkout/")
    page.get_by_role("button", name="Pay (test)").click()
    page.wait_for_url(f"**/app/labs/{cast.lab.uuid}/billing/")
    page.get_by_test_id("receipt-link").first.click()
    assert "50.00 USD" in page.get_by_test_id("receipt").inner_text()

    overflow = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    wide = {}
    for path in [
        page.url.removeprefix(live_server.url),
        f"/app/labs/{cast.lab.uuid}/billing/",
        f"/app/labs/{cast.lab.uuid}/",
        f"/app/labs/{cast.lab.uuid}/usage/",
        "/app/keys/",
        "/app/",
    ]:
        page.goto(f"{live_server.url}{path}")
        if (extra := page.evaluate(overflow)) > 0:
            wide[path] = extra
    assert wide == {}
