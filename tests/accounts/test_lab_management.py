"""Self-service labs: anyone creates a lab; its owners and admins add projects and members and
change roles; members get 403, outsiders 404; the last owner stays an owner."""

from __future__ import annotations

import threading

import pytest
from django.db import connections
from django.test import Client

from accounts.models import Lab, LabInvitation, Membership, Project, Role
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


def invite(client, lab, email, role="member"):
    response = client.post(lab_url(lab, "members/"), {"email": email, "role": role})
    assert response.status_code == 302
    return client.get(response["Location"]).content.decode()


def test_an_invitee_joins_only_by_accepting(
    client, cast, mailoutbox, django_capture_on_commit_callbacks
):
    client.force_login(cast.alice)
    with django_capture_on_commit_callbacks(execute=True):  # the mail goes once committed
        page = invite(client, cast.lab, "CHARLIE@example.com", "admin")
    assert "Invited charlie@example.com as admin: they join Alice Lab when they accept" in page
    assert "charlie@example.com" not in roles(cast.lab)
    [mail] = mailoutbox
    assert mail.to == ["charlie@example.com"] and "Alice Lab" in mail.subject
    assert "alice@example.com invited you to the lab Alice Lab" in mail.body
    [invitation] = LabInvitation.objects.all()

    client.force_login(cast.bob)  # not his invitation
    assert client.post(f"/app/invitations/{invitation.uuid}/accept/").status_code == 404
    client.force_login(cast.charlie)
    assert client.get(lab_url(cast.lab)).status_code == 404  # not a member yet
    dashboard = client.get("/app/").content.decode()
    assert f'data-invitation="{invitation.uuid}"' in dashboard
    assert "alice@example.com invited you to <strong>Alice Lab</strong> as admin." in dashboard
    joined = client.post(f"/app/invitations/{invitation.uuid}/accept/", follow=True)
    assert joined.redirect_chain == [(lab_url(cast.lab), 302)]
    assert "You joined Alice Lab." in joined.content.decode()
    assert roles(cast.lab)["charlie@example.com"] == Role.ADMIN
    assert client.post(f"/app/invitations/{invitation.uuid}/accept/").status_code == 404


def test_an_address_without_an_account_gets_the_same_answer_and_sees_it_after_sign_up(client, cast):
    client.force_login(cast.alice)
    assert "Invited dana@example.com as member" in invite(client, cast.lab, "dana@example.com")
    dana = _user("dana@example.com")  # signs up later, address verified
    client.force_login(dana)
    [invitation] = LabInvitation.objects.filter(email="dana@example.com")
    assert f'data-invitation="{invitation.uuid}"' in client.get("/app/").content.decode()
    declined = client.post(f"/app/invitations/{invitation.uuid}/decline/", follow=True)
    assert "Declined the invitation to Alice Lab." in declined.content.decode()
    assert "dana@example.com" not in roles(cast.lab)
    assert client.post(f"/app/invitations/{invitation.uuid}/accept/").status_code == 404


def test_invitation_mistakes_come_back_as_messages(client, cast):
    client.force_login(cast.alice)
    assert "bob@example.com is already a member of Alice Lab." in invite(
        client, cast.lab, "bob@example.com"
    )
    assert "Enter a valid email address." in invite(client, cast.lab, "not an email")
    assert not LabInvitation.objects.exists()
    invite(client, cast.lab, "erin@example.com")
    invite(client, cast.lab, "erin@example.com", "admin")  # again: the open one's role changes
    [invitation] = LabInvitation.objects.all()
    assert invitation.role == Role.ADMIN
    cancel = client.post(lab_url(cast.lab, f"invitations/{invitation.uuid}/cancel/"), follow=True)
    assert "Cancelled the invitation of erin@example.com." in cancel.content.decode()
    erin = _user("erin@example.com")
    client.force_login(erin)
    assert client.post(f"/app/invitations/{invitation.uuid}/accept/").status_code == 404


def test_only_owners_invite_owners_and_members_or_outsiders_invite_nobody(client, cast):
    membership_add(lab=cast.lab, user=cast.charlie, role=Role.ADMIN)
    client.force_login(cast.charlie)  # an admin now
    assert "Only an owner makes someone an owner." in invite(
        client, cast.lab, "dana@example.com", "owner"
    )
    client.force_login(cast.bob)
    assert client.post(lab_url(cast.lab, "members/"), {"email": "x@example.com"}).status_code == 403
    client.force_login(_user("dana@example.com"))
    assert client.post(lab_url(cast.lab, "members/"), {"email": "x@example.com"}).status_code == 404
    assert not LabInvitation.objects.exists()


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
    outsider = client.post(lab_url(cast.lab, f"members/{cast.charlie.uuid}/"), {"action": "remove"})
    assert outsider.status_code == 404


def test_a_member_leaves_but_changes_nothing_else(client, cast):
    client.force_login(cast.bob)
    url = lab_url(cast.lab, f"members/{cast.bob.uuid}/")
    assert client.post(url, {"action": "role", "role": "admin"}).status_code == 403
    assert (
        client.post(
            lab_url(cast.lab, f"members/{cast.alice.uuid}/"), {"action": "remove"}
        ).status_code
        == 403
    )
    assert 'value="remove"' in client.get(lab_url(cast.lab)).content.decode()  # Leave lab
    left = client.post(url, {"action": "remove"}, follow=True)
    assert left.redirect_chain == [("/app/", 302)]
    assert "You left Alice Lab." in left.content.decode()
    assert roles(cast.lab) == {"alice@example.com": Role.OWNER}


def test_a_personal_labs_own_user_stays_its_owner(client, cast):
    own = Lab.objects.get(personal_for=cast.alice)
    membership_add(lab=own, user=cast.bob, role=Role.OWNER)
    client.force_login(cast.bob)
    for data in ({"action": "remove"}, {"action": "role", "role": "member"}):
        response = client.post(lab_url(own, f"members/{cast.alice.uuid}/"), data)
        page = client.get(response["Location"]).content.decode()
        assert "is alice@example.com&#x27;s own lab: they stay its owner." in page
    assert roles(own)["alice@example.com"] == Role.OWNER


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
    # Both requests are answered (302), unless one was made by an owner the other had already
    # demoted: then its page refuses it (403) before it reaches the service. Never both.
    assert sorted(statuses) in ([302, 302], [302, 403])
    assert sorted(roles(cast.lab).values()) == [Role.MEMBER, Role.OWNER]


def _user(email):
    from tests.conftest import _verified_user

    return _verified_user(email, email.split("@")[0])


def test_an_invitation_grants_only_what_its_sender_may_still_grant(client, cast):
    membership_add(lab=cast.lab, user=cast.bob, role=Role.OWNER)
    client.force_login(cast.bob)
    invite(client, cast.lab, "charlie@example.com", "owner")
    [invitation] = LabInvitation.objects.all()
    client.force_login(cast.alice)
    client.post(
        lab_url(cast.lab, f"members/{cast.bob.uuid}/"), {"action": "role", "role": "member"}
    )
    client.force_login(cast.charlie)
    refused = client.post(f"/app/invitations/{invitation.uuid}/accept/", follow=True)
    assert "is no longer valid" in refused.content.decode()
    assert "charlie@example.com" not in roles(cast.lab)
    invitation.refresh_from_db()
    assert invitation.closed_at is not None and invitation.accepted_at is None


def test_removing_a_member_closes_invitations_that_would_let_them_back(client, cast):
    from allauth.account.models import EmailAddress

    EmailAddress.objects.create(user=cast.bob, email="bob.work@example.com", verified=True)
    client.force_login(cast.alice)
    assert "bob.work@example.com is already a member" in invite(
        client, cast.lab, "bob.work@example.com"
    )
    client.post(lab_url(cast.lab, f"members/{cast.bob.uuid}/"), {"action": "remove"})
    invite(client, cast.lab, "bob.work@example.com", "admin")  # he may come back by accepting
    membership_add(lab=cast.lab, user=cast.bob)  # back somehow, then removed again
    client.post(lab_url(cast.lab, f"members/{cast.bob.uuid}/"), {"action": "remove"})
    client.force_login(cast.bob)
    assert 'data-invitation="' not in client.get("/app/").content.decode()
    assert "bob@example.com" not in roles(cast.lab)


def test_the_same_invitation_again_sends_no_second_mail(
    client, cast, mailoutbox, django_capture_on_commit_callbacks
):
    client.force_login(cast.alice)
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            invite(client, cast.lab, "erin@example.com")
        invite(client, cast.lab, "erin@example.com", "admin")  # a new role: a new mail
    assert len(mailoutbox) == 2


@pytest.mark.parametrize("name", ["Evil\r\nBcc: x@example.com", "nul\x00", "rtl\u202eabc"])
def test_a_name_with_control_characters_is_refused(client, cast, name):
    labs, projects = Lab.objects.count(), Project.objects.count()
    client.force_login(cast.charlie)
    assert client.post("/app/labs/new/", {"name": name}).status_code == 400
    client.force_login(cast.alice)
    client.post(lab_url(cast.lab, "projects/"), {"name": name})
    assert (Lab.objects.count(), Project.objects.count()) == (labs, projects)


def test_an_overlong_address_is_a_message_not_a_500(client, cast):
    client.force_login(cast.alice)
    page = invite(client, cast.lab, "a" * 64 + "@" + "b" * 190 + ".example.com")
    assert "Ensure this value has at most 254 characters" in page
    assert not LabInvitation.objects.exists()


def test_operators_read_invitations_in_the_admin(client, cast):
    from accounts.services import user_create

    client.force_login(cast.alice)
    invite(client, cast.lab, "erin@example.com", "admin")
    operator = user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)
    client.force_login(operator)
    page = client.get("/admin/accounts/labinvitation/").content.decode()
    assert "erin@example.com" in page and "Alice Lab" in page
    assert client.get("/admin/accounts/labinvitation/add/").status_code == 403


def test_lab_creation_and_invitations_are_limited_per_user(client, cast, settings):
    settings.LABS_PER_DAY, settings.LAB_INVITATIONS_PER_HOUR = 2, 2
    client.force_login(cast.charlie)
    labs = Lab.objects.count()
    for n in range(2):
        assert client.post("/app/labs/new/", {"name": f"Lab {n}"}).status_code == 302
    refused = client.post("/app/labs/new/", {"name": "One too many"})
    assert refused.status_code == 429 and "At most 2 new labs a day" in refused.content.decode()
    assert Lab.objects.count() == labs + 2
    client.force_login(cast.alice)
    for n in range(2):
        invite(client, cast.lab, f"guest{n}@example.com")
    assert "At most 2 invitations an hour" in invite(client, cast.lab, "guest2@example.com")
    assert LabInvitation.objects.count() == 2


def test_the_navigation_leads_to_the_account_pages_and_they_lead_to_each_other(client, cast):
    client.force_login(cast.bob)
    assert (
        'href="/accounts/email/" title="bob@example.com">Account</a>'
        in client.get("/app/").content.decode()
    )
    for url in ("/accounts/email/", "/accounts/password/change/"):
        page = client.get(url).content.decode()
        assert "Signed in as bob@example.com" in page
        assert 'href="/accounts/email/"' in page and 'href="/accounts/password/change/"' in page
        assert f'href="{url}" aria-current="page"' in page


def test_a_labs_only_owner_is_offered_no_leave_or_remove(client, cast):
    client.force_login(cast.alice)  # Alice Lab's only owner
    page = client.get(lab_url(cast.lab)).content.decode()
    alice_row = page.split(f'data-member="{cast.alice.uuid}"')[1].split("</tr>")[0]
    assert "The only owner: make another owner first." in alice_row
    assert "Leave lab" not in alice_row
    bob_row = page.split(f'data-member="{cast.bob.uuid}"')[1].split("</tr>")[0]
    assert "Remove bob@example.com" in bob_row
