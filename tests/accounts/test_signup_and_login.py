"""allauth through the Django test client: signup, verification, bad input, rate limits."""

import re

import pytest
from django.core import mail

from accounts.models import Lab, Membership, Project, Role, User
from tests.conftest import PASSWORD


def _signup(client, email, password=PASSWORD, password2=None):
    return client.post(
        "/accounts/signup/",
        {"email": email, "password1": password, "password2": password2 or password},
    )


@pytest.mark.django_db
def test_signup_creates_user_personal_lab_and_default_project(client):
    response = _signup(client, "New.Person@Example.com")
    assert response.status_code == 302
    user = User.objects.get(email="new.person@example.com")
    lab = Lab.objects.get(personal_for=user)
    assert Membership.objects.get(lab=lab, user=user).role == Role.OWNER
    assert list(Project.objects.filter(lab=lab).values_list("name", flat=True)) == ["Default"]


@pytest.mark.django_db
def test_login_needs_the_verified_email_then_works(client):
    _signup(client, "dana@example.com")
    client.logout()
    response = client.post("/accounts/login/", {"login": "dana@example.com", "password": PASSWORD})
    assert response.url == "/accounts/confirm-email/"  # not in yet: verification first
    message = mail.outbox[-1]
    assert message.subject.startswith("[Meterbill] ")
    assert message.body.startswith("Hello from Meterbill!")  # not from the request's host
    link = re.search(r"https?://\S+/accounts/confirm-email/\S+/", message.body).group(0)
    path = link.split("testserver", 1)[1]
    assert client.post(path).status_code == 302
    response = client.post("/accounts/login/", {"login": "dana@example.com", "password": PASSWORD})
    assert response.url == "/app/"
    assert "dana&#x27;s lab" in client.get("/app/").content.decode()


@pytest.mark.django_db
def test_signup_with_an_existing_email_writes_nothing(client, cast):
    before = (User.objects.count(), Lab.objects.count())
    response = _signup(client, "ALICE@example.com")
    # allauth prevents account enumeration: the page looks like success and mails the owner.
    assert response.status_code in (200, 302)
    assert (User.objects.count(), Lab.objects.count()) == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("password", "password2", "message"),
    [
        ("short", None, "too short"),
        ("password123", None, "too common"),
        ("1234567890123", None, "entirely numeric"),
        (PASSWORD, "another-password-1", "same password"),
    ],
)
def test_weak_or_mismatched_passwords_get_a_form_error(client, password, password2, message):
    response = _signup(client, "eve@example.com", password, password2)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.filter(email="eve@example.com").exists()


@pytest.mark.django_db
def test_wrong_password_gets_a_form_error(client, cast):
    response = client.post("/accounts/login/", {"login": "alice@example.com", "password": "nope"})
    assert response.status_code == 200
    assert "not correct" in response.content.decode()


@pytest.mark.django_db
def test_failed_logins_are_rate_limited(client, cast):
    for _ in range(5):
        client.post("/accounts/login/", {"login": "alice@example.com", "password": "nope"})
    response = client.post("/accounts/login/", {"login": "alice@example.com", "password": PASSWORD})
    assert response.status_code == 200
    assert "Too many failed login attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_password_reset_mails_a_link(client, cast):
    response = client.post("/accounts/password/reset/", {"email": "alice@example.com"})
    assert response.status_code == 302
    assert "password/reset/key" in mail.outbox[-1].body


@pytest.mark.django_db
def test_logout_needs_post_and_ends_the_session(client, cast):
    client.force_login(cast.alice)
    client.post("/accounts/logout/")
    assert client.get("/app/").status_code == 302
