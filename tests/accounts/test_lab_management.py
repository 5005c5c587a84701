"""Self-service labs: anyone creates a lab; its owners and admins add projects and members and
change roles; members get 403, outsiders 404; the last owner stays an owner."""

from __future__ import annotations

import threading

import pytest
from django.db import connections
from django.test import Client

from accounts.models import Lab, Membership, Project, Role
from accounts.services import membership_add
from billing.models import AccountType, LedgerAccount

pytestmark = pytest.mark.django_db


def lab_url(lab, tail=""):
    return f"/app/labs/{lab.uuid}/{tail}"


def roles(lab):
    return dict(Membership.objects.filter(lab=lab).values_list("user__email", "role"))


def test_anyone_creates_a_lab_they_own_with_a_default_project(client, cast):
    client.force_login(cast.charlie)
    assert 'href="/app/labs/new/"' in client.get("/app/").content.decode()
    response = client.post("/app/labs/new/", {"name": "  Charlie's team  "}, follow=True)
    lab = Lab.objects.get(name="Charlie's team")
    assert response.redirect_chain == [(lab_url(lab), 302)]
    assert "Created Charlie&#x27;s team, with a project named Default." in response.content.decode()
    assert roles(lab) == {"charlie@example.com": Role.OWNER}
    [project] = lab.projects.all()
    assert project.name == "Default"
    assert LedgerAccount.objects.filter(project=project, type=AccountType.PROJECT).exists()
    assert LedgerAccount.objects.filter(lab=lab, type=AccountType.LAB).exists()


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_a_lab_needs_a_name(client, cast, name):
    client.force_login(cast.charlie)
    labs = Lab.objects.count()
    response = client.post("/app/labs/new/", {"name": name})
    assert response.status_code == 400 and "field-error" in response.content.decode()
    assert Lab.objects.count() == labs


def test_owners_and_admins_add_projects_members_cannot_and_outsiders_see_nothing(client, cast):
    client.force_login(cast.alice)
    page = client.post(lab_url(cast.lab, "projects/"), {"name": "Gamma"}, follow=True)
    assert "Created the project Gamma." in page.content.decode()
    again = client.post(lab_url(cast.lab, "projects/"), {"name": "gamma"}, follow=True)
    assert "Alice Lab already has a project named gamma." in again.content.decode()
    client.force_login(cast.bob)  # a member
    assert client.post(lab_url(cast.lab, "projects/"), {"name": "Bob's"}).status_code == 403
    client.force_login(cast.charlie)  # an outsider
    assert client.post(lab_url(cast.lab, "projects/"), {"name": "Charlie's"}).status_code == 404
    names = sorted(Project.objects.filter(lab=cast.lab).values_list("name", flat=True))
    assert names == ["Alpha", "Beta", "Gamma"]


def test_adding_a_member_by_email(client, cast):
    client.force_login(cast.alice)
    added = client.post(
        lab_url(cast.lab, "members/"),
        {"email": "CHARLIE@example.com", "role": "admin"},
        follow=True,
    )
    assert "Added charlie@example.com as admin." in added.content.decode()
    assert roles(cast.lab)["charlie@example.com"] == Role.ADMIN
    for email, error in [
        ("nobody@example.com", "No Meterbill account uses this email"),
        ("bob@example.com", "bob@example.com is already a member of Alice Lab."),
        ("not an email", "Enter a valid email address."),
    ]:
        page = client.post(lab_url(cast.lab, "members/"), {"email": email, "role": "member"})
        assert error in client.get(page["Location"]).content.decode()
    assert len(roles(cast.lab)) == 3


def test_only_owners_make_owners_and_members_or_outsiders_add_nobody(client, cast):
    dana = _user("dana@example.com")
    membership_add(lab=cast.lab, user=cast.charlie, role=Role.ADMIN)
    client.force_login(cast.charlie)  # an admin now
    page = client.post(lab_url(cast.lab, "members/"), {"email": dana.email, "role": "owner"})
    assert "Only an owner makes someone an owner." in client.get(page["Location"]).content.decode()
    client.force_login(cast.bob)
    assert client.post(lab_url(cast.lab, "members/"), {"email": dana.email}).status_code == 403
    client.force_login(dana)
    assert client.post(lab_url(cast.lab, "members/"), {"email": dana.email}).status_code == 404
    assert "dana@example.com" not in roles(cast.lab)


def test_roles_change_and_members_leave_but_the_last_owner_stays(client, cast):
    def change(user, **data):
        response = client.post(lab_url(cast.lab, f"members/{user.uuid}/"), data)
        assert response.status_code == 302
        return client.get(response["Location"]).content.decode()

    client.force_login(cast.alice)
    assert "Alice Lab needs an owner" in change(cast.alice, action="role", role="member")
    assert "Alice Lab needs an owner" in change(cast.alice, action="remove")
    assert "bob@example.com is now admin." in change(cast.bob, action="role", role="admin")
    client.force_login(cast.bob)  # an admin may not touch an owner, nor make one
    assert "Only an owner changes or removes" in change(cast.alice, action="role", role="admin")
    assert "Only an owner makes someone an owner." in change(cast.bob, action="role", role="owner")
    assert roles(cast.lab) == {"alice@example.com": Role.OWNER, "bob@example.com": Role.ADMIN}
    client.force_login(cast.alice)
    assert "Removed bob@example.com from Alice Lab." in change(cast.bob, action="remove")
    client.force_login(cast.bob)
    assert client.get(lab_url(cast.lab)).status_code == 404  # gone: an outsider now
    client.force_login(cast.alice)
    assert (
        client.post(
            lab_url(cast.lab, f"members/{cast.charlie.uuid}/"), {"action": "remove"}
        ).status_code
        == 404
    )


@pytest.mark.django_db(transaction=True)
def test_two_owners_demoting_each_other_at_once_leave_one_owner(cast):
    membership_add(lab=cast.lab, user=cast.bob, role=Role.OWNER)
    barrier, statuses = threading.Barrier(2), []

    def demote(me, other):
        try:
            browser = Client()
            browser.force_login(me)
            barrier.wait()
            url = lab_url(cast.lab, f"members/{other.uuid}/")
            statuses.append(browser.post(url, {"action": "role", "role": "member"}).status_code)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=demote, args=(cast.alice, cast.bob)),
        threading.Thread(target=demote, args=(cast.bob, cast.alice)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [302, 302]
    assert sorted(roles(cast.lab).values()) == [Role.MEMBER, Role.OWNER]


def _user(email):
    from tests.conftest import _verified_user

    return _verified_user(email, email.split("@")[0])
