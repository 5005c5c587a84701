import uuid

import pytest
from django.urls import reverse


@pytest.mark.django_db
def test_landing_page_is_public(client):
    response = client.get("/")
    assert response.status_code == 200
    assert b"Create an account" in response.content


@pytest.mark.django_db
def test_landing_sends_signed_in_people_to_the_dashboard(client, cast):
    client.force_login(cast.alice)
    assert client.get("/").url == reverse("dashboard")


@pytest.mark.django_db
def test_dashboard_needs_a_login(client):
    response = client.get("/app/")
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


@pytest.mark.django_db
def test_dashboard_lists_the_users_labs_and_projects(client, cast):
    client.force_login(cast.bob)
    page = client.get("/app/").content.decode()
    assert "Alice Lab" in page
    assert "Alpha" in page and "Beta" in page
    assert "Bob&#x27;s lab" in page  # his personal lab
    assert "Default" in page


@pytest.mark.django_db
def test_dashboard_and_billing_chooser_show_each_labs_credits(client, cast):
    from billing import services as billing

    billing.lab_top_up(lab=cast.lab, amount="1234.5")
    billing.budget_assign(lab=cast.lab, project=cast.alpha, amount="30")
    billing.hold_create(project=cast.alpha, amount="0.081", job_uuid=uuid.uuid4())
    client.force_login(cast.bob)
    page = client.get("/app/").content.decode()
    assert 'data-testid="dashboard-lab-balance">1,204.50<' in page
    assert "Alpha: <strong>29.919</strong> credits" in page
    assert "(and 0.081 held for jobs in progress)" in page
    assert f"<code>{cast.alpha.uuid}</code>" in page  # what the API's proj_id wants
    chooser = client.get("/app/billing/").content.decode()  # bob is in two labs
    assert '<td class="num">1,204.50</td>' in chooser and '<td class="num">30.00</td>' in chooser


@pytest.mark.django_db
def test_outsider_dashboard_shows_nothing_of_alice(client, cast):
    client.force_login(cast.charlie)
    page = client.get("/app/").content.decode()
    assert "Alice" not in page
    assert str(cast.alpha.uuid) not in page


@pytest.mark.django_db
def test_lab_page_shows_projects_and_members_to_members(client, cast):
    client.force_login(cast.bob)
    page = client.get(f"/app/labs/{cast.lab.uuid}/").content.decode()
    assert "Alpha" in page
    assert "alice@example.com" in page
    assert "you are member" in page


@pytest.mark.django_db
def test_outsider_gets_404_on_another_lab_page(client, cast):
    client.force_login(cast.charlie)
    response = client.get(f"/app/labs/{cast.lab.uuid}/")
    assert response.status_code == 404
    assert "Alice" not in response.content.decode()
