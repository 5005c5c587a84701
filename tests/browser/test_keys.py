"""The API keys page in Chromium: create a key with a service limit, copy it once, find it in the
list by its prefix, revoke it."""

from decimal import Decimal

import pytest

from keys.models import ApiKey
from metering.cost import Tier
from tests.browser.test_lab_budget import sign_in
from tests.metering.test_reservations import priced_service

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def llm(cast):
    service = priced_service("ml-llm", tiers=[Tier(0, None, Decimal(0), Decimal("0.01"))])
    service.key_requests_per_minute = 100
    service.save()
    return service


def test_a_member_creates_copies_finds_and_revokes_a_key(page, live_server, cast, llm):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    sign_in(page, live_server, "bob@example.com")
    page.get_by_role("link", name="API keys").first.click()
    page.wait_for_url("**/app/keys/")
    assert page.get_by_text("No keys yet.").is_visible()

    page.get_by_role("button", name="New key").click()
    page.fill("input[name=name]", "Browser gateway")
    page.select_option("select[name=project]", label="Alice Lab / Beta (0.00 credits)")
    page.get_by_label("Only the services checked below").check()
    page.get_by_label("Allow ml-llm").check()
    assert page.get_by_text("default and max 100").is_visible()
    page.fill("input[name='limits.ml-llm.requests_per_minute']", "150")  # looser than the default
    page.get_by_role("button", name="Create key").click()
    assert (
        page.get_by_role("alert").inner_text().startswith("ml-llm requests per minute: At most 100")
    )
    assert ApiKey.objects.count() == 0

    page.fill("input[name='limits.ml-llm.requests_per_minute']", "25")
    page.get_by_role("button", name="Create key").click()
    full_key = page.get_by_test_id("full-key").input_value()
    key = ApiKey.objects.get()
    assert full_key.startswith(f"sk_{key.lookup_id}_")
    assert "it will not be shown again" in page.get_by_test_id("key-once-warning").inner_text()
    page.get_by_role("button", name="Copy").click()
    page.get_by_role("status").get_by_text("Copied.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == full_key

    page.get_by_role("button", name="Back to API keys").click()
    page.wait_for_url("**/app/keys/")
    row = page.locator(f"article[data-key='{key.uuid}']")
    assert row.get_by_test_id("key-prefix").inner_text() == f"sk_{key.lookup_id}_…"
    assert "Alice Lab / Beta" in row.inner_text()
    assert "ml-llm: 25 req/min" in row.inner_text()
    assert "Services: ml-llm" in row.inner_text()
    assert row.get_by_test_id("key-status").inner_text() == "active"
    assert full_key not in page.content()

    row.get_by_role("link", name="Revoke").click()
    page.get_by_role("button", name="Revoke key").click()
    page.wait_for_url("**/app/keys/")
    assert page.get_by_text(f"Revoked Browser gateway (sk_{key.lookup_id}_…).").is_visible()
    row = page.locator(f"article[data-key='{key.uuid}']")
    assert row.get_by_test_id("key-status").inner_text() == "revoked"
    assert row.get_by_role("link", name="Revoke").count() == 0
    key.refresh_from_db()
    assert key.revoked_by == cast.bob


def test_copy_falls_back_to_selecting_the_key_without_the_clipboard_api(page, live_server, cast):
    page.add_init_script("Object.defineProperty(navigator, 'clipboard', {value: undefined})")
    sign_in(page, live_server, "alice@example.com")
    page.goto(f"{live_server.url}/app/keys/new/")
    page.fill("input[name=name]", "Fallback")
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_test_id("full-key")
    assert key.input_value().startswith("sk_")
    page.get_by_role("button", name="Copy").click()
    status = page.get_by_role("status")
    page.wait_for_function("document.querySelector('[data-copy-status]').textContent !== ''")
    assert status.inner_text() in ("Copied.", "Selected: press Ctrl+C (⌘C on a Mac) to copy.")
    selected = key.evaluate("input => input.value.slice(input.selectionStart, input.selectionEnd)")
    assert selected == key.input_value()  # the whole key, ready for Ctrl+C


def test_the_creator_changes_a_keys_cap_and_limits_in_place(page, live_server, cast, llm):
    from keys.services import key_create, key_settings_validate

    key, _ = key_create(
        project=cast.alpha,
        name="Before",
        key_settings=key_settings_validate(services=None, limits=None),
        created_by=cast.alice,
    )
    sign_in(page, live_server, "alice@example.com")
    page.goto(f"{live_server.url}/app/keys/")
    page.locator(f"article[data-key='{key.uuid}']").get_by_role("link", name="Edit").click()
    assert page.locator("select[name=project]").count() == 0  # a key never moves
    page.fill("input[name=name]", "After")
    page.fill("input[name='limits.ml-llm.requests_per_minute']", "101")  # looser than 100
    page.get_by_role("button", name="Save settings").click()
    assert "At most 100" in page.get_by_role("alert").inner_text()
    page.fill("input[name='limits.ml-llm.requests_per_minute']", "40")
    page.fill("input[name=credit_limit]", "7.5")
    page.select_option("select[name=credit_limit_period]", "weekly")
    page.get_by_role("button", name="Save settings").click()
    page.wait_for_url("**/app/keys/")
    assert page.get_by_text("Saved the settings of After.").is_visible()
    row = page.locator(f"article[data-key='{key.uuid}']").inner_text()
    assert "ml-llm: 40 req/min" in row and "7.5" in row
    key.refresh_from_db()
    assert (key.name, key.credit_limit, key.credit_limit_period) == (
        "After", Decimal("7.5"), "weekly",
    )  # fmt: skip
