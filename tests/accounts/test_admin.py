import re

import pytest

from accounts.models import Lab, Project, ServiceToken, User
from accounts.services import service_token_create, user_create


@pytest.fixture
def operator(db):
    return user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/admin/accounts/user/?q=alice",
        "/admin/accounts/user/?is_staff__exact=0",
        "/admin/accounts/lab/?q=Alice",
        "/admin/accounts/lab/?personal_for__isempty=1",
        "/admin/accounts/project/?q=Alpha",
        "/admin/accounts/membership/?role__exact=member",
        "/admin/accounts/servicetoken/?q=gw",
        "/admin/accounts/servicetoken/?revoked_at__isempty=0",
    ],
)
def test_changelists_search_and_filter(client, operator, cast, path):
    service_token_create(name="gw", scopes=["labs"])
    client.force_login(operator)
    response = client.get(path)
    assert response.status_code == 200, path


@pytest.mark.django_db
def test_lab_change_page_shows_members_and_projects(client, operator, cast):
    client.force_login(operator)
    page = client.get(f"/admin/accounts/lab/{cast.lab.pk}/change/").content.decode()
    assert "alice@example.com" in page and "Alpha" in page


@pytest.mark.django_db
def test_non_staff_cannot_open_the_admin(client, cast):
    client.force_login(cast.alice)
    response = client.get("/admin/accounts/lab/")
    assert response.status_code == 302
    assert "/admin/login/" in response.url


@pytest.mark.django_db
def test_user_added_in_the_admin_gets_a_personal_lab(client, operator):
    client.force_login(operator)
    response = client.post(
        "/admin/accounts/user/add/",
        {"email": "gina@example.com", "password1": "a-good-pass-99", "password2": "a-good-pass-99"},
    )
    assert response.status_code == 302
    user = User.objects.get(email="gina@example.com")
    assert Lab.objects.get(personal_for=user)
    assert Project.objects.filter(lab__personal_for=user, name="Default").exists()


@pytest.mark.django_db
def test_service_token_created_in_the_admin_is_shown_once(client, operator, api_client):
    client.force_login(operator)
    response = client.post(
        "/admin/accounts/servicetoken/add/",
        {"name": "gateway", "scopes": ["labs", "usage"], "lab": ""},
        follow=True,
    )
    page = response.content.decode()
    plain = re.search(r"<code>(st_[A-Za-z0-9_\-]+)</code>", page).group(1)
    token = ServiceToken.objects.get()
    assert token.created_by == operator and token.scopes == ["labs", "usage"]
    change_page = client.get(f"/admin/accounts/servicetoken/{token.pk}/change/")
    assert plain not in change_page.content.decode()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {plain}")
    assert api_client.get("/api/v1/labs/").status_code == 200


@pytest.mark.django_db
def test_admin_revoke_action(client, operator):
    token, _plain = service_token_create(name="gw", scopes=["labs"])
    client.force_login(operator)
    client.post(
        "/admin/accounts/servicetoken/",
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    token.refresh_from_db()
    assert token.revoked_at is not None


@pytest.mark.django_db
def test_admin_token_form_rejects_no_scopes(client, operator):
    client.force_login(operator)
    response = client.post("/admin/accounts/servicetoken/add/", {"name": "x", "lab": ""})
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()
    assert ServiceToken.objects.count() == 0
