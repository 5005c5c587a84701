from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.services import user_create
from billing import services
from billing.models import EntryType, Grant, GrantCategory, GrantSource, JournalEntry
from billing.selectors import lab_balance


@pytest.fixture
def operator(db):
    return user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)


def add_grant(client, lab, **data):
    form = {
        "lab": lab.pk, "category": "promotional", "amount": "25", "priority": "",
        "effective_at_0": "", "effective_at_1": "", "expires_at_0": "", "expires_at_1": "",
        "reason": "conference voucher",
    }  # fmt: skip
    form.update(data)
    return client.post("/admin/billing/grant/add/", form)


@pytest.mark.django_db
def test_operator_adds_a_promotional_grant_with_expiry(client, operator, cast):
    client.force_login(operator)
    expires = timezone.now() + timedelta(days=30)
    response = add_grant(
        client, cast.lab,
        expires_at_0=expires.strftime("%Y-%m-%d"), expires_at_1=expires.strftime("%H:%M:%S"),
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    grant = Grant.objects.get(lab=cast.lab)
    assert (grant.category, grant.source, grant.amount) == (
        GrantCategory.PROMOTIONAL, GrantSource.OPERATOR, Decimal("25")
    )  # fmt: skip
    assert grant.expires_at is not None and grant.created_by == operator
    entry = JournalEntry.objects.get(type=EntryType.TOP_UP)
    assert (entry.actor_user, entry.reason) == (operator, "conference voucher")
    assert lab_balance(cast.lab).balance == Decimal("25")


@pytest.mark.django_db
def test_a_manual_top_up_needs_a_reason_and_a_valid_amount(client, operator, cast):
    client.force_login(operator)
    no_reason = add_grant(client, cast.lab, category="paid", reason="")
    assert no_reason.status_code == 200
    assert "This field is required" in no_reason.content.decode()
    bad_amount = add_grant(client, cast.lab, category="paid", amount="1.0000001")
    assert "at most 6 decimal places" in bad_amount.content.decode()
    past = add_grant(client, cast.lab, expires_at_0="2000-01-01", expires_at_1="00:00:00")
    assert "The expiry must be after the grant takes effect" in past.content.decode()
    assert JournalEntry.objects.count() == 0
    ok = add_grant(client, cast.lab, category="paid", reason="wire transfer #8812")
    assert ok.status_code == 302
    assert Grant.objects.get().category == GrantCategory.PAID


@pytest.mark.django_db
def test_operator_voids_a_grant_with_a_reason(client, operator, cast):
    grant = services.lab_top_up(lab=cast.lab, amount="40")
    client.force_login(operator)
    url = "/admin/billing/grant/"
    confirm = client.post(url, {"action": "void", "_selected_action": [grant.pk]})
    assert confirm.status_code == 200 and b"Void these grants?" in confirm.content
    client.post(url, {"action": "void", "_selected_action": [grant.pk], "apply": "1", "reason": ""})
    assert JournalEntry.objects.filter(type=EntryType.VOID).count() == 0  # a reason is required
    client.post(
        url, {"action": "void", "_selected_action": [grant.pk], "apply": "1", "reason": "fraud"}
    )
    entry = JournalEntry.objects.get(type=EntryType.VOID)
    assert (entry.actor_user, entry.reason) == (operator, "fraud")
    assert lab_balance(cast.lab).balance == 0


@pytest.mark.django_db
def test_the_journal_is_read_only(client, operator, cast):
    services.lab_top_up(lab=cast.lab, amount="5")
    entry = JournalEntry.objects.get()
    client.force_login(operator)
    assert client.get("/admin/billing/journalentry/").status_code == 200
    assert client.get(f"/admin/billing/journalentry/{entry.pk}/change/").status_code == 200
    assert client.get("/admin/billing/journalentry/add/").status_code == 403
    assert client.post(f"/admin/billing/journalentry/{entry.pk}/delete/").status_code == 403
    assert (
        client.get(f"/admin/billing/grant/{entry.lines.first().grant_id}/delete/").status_code
        == 403
    )


@pytest.mark.django_db
def test_lab_admin_page_shows_balances_and_grants(client, operator, cast):
    services.lab_top_up(lab=cast.lab, amount="12.5")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="2.5")
    client.force_login(operator)
    page = client.get(f"/admin/accounts/lab/{cast.lab.pk}/change/").content.decode()
    assert "Lab: <strong>10.000000</strong>" in page
    assert "Alpha" in page and "2.500000" in page
    for path in ["/admin/billing/grant/?q=Alice", "/admin/billing/ledgeraccount/?type__exact=vlab"]:
        assert client.get(path).status_code == 200


@pytest.mark.django_db
def test_demo_credits_load_once(settings, capsys):
    from django.core.management import call_command

    settings.DEBUG = True
    call_command("seed_demo")
    call_command("seed_demo_credits")
    call_command("seed_demo_credits")
    from accounts.models import Lab

    lab = Lab.objects.get(personal_for__email="demo@example.com")
    state = lab_balance(lab)
    # 25 assigned and the Starter plan's first 10, once; new signups start on that plan.
    assert (state.balance, state.projects[0].balance) == (Decimal("75"), Decimal("35"))
    assert lab.plan_subscriptions.get().plan.is_default
