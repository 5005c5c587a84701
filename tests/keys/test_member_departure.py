"""A member who leaves a lab, or is removed, can no longer spend its credits: the keys they
made in its projects are revoked with the membership; the others' keys keep working."""

from __future__ import annotations

import pytest

from keys.models import ApiKey
from tests.keys.conftest import authorize

pytestmark = pytest.mark.django_db


def test_removing_a_member_revokes_the_keys_they_made(client, cast, make_key, gateway):
    _bobs, bobs_secret = make_key(created_by=cast.bob)
    alices, alices_secret = make_key(created_by=cast.alice)
    client.force_login(cast.alice)
    response = client.post(
        f"/app/labs/{cast.lab.uuid}/members/{cast.bob.uuid}/", {"action": "remove"}
    )
    page = client.get(response["Location"]).content.decode()
    assert "Removed bob@example.com from Alice Lab and revoked 1 API key they made." in page
    assert authorize(gateway, bobs_secret).json()["code"] == "key_revoked"
    assert ApiKey.objects.get(created_by=cast.bob).revoked_by == cast.alice
    assert authorize(gateway, alices_secret).status_code == 200
    alices.refresh_from_db()
    assert alices.revoked_at is None


def test_leaving_revokes_your_own_keys_there(client, cast, make_key, gateway):
    _bobs, bobs_secret = make_key(created_by=cast.bob)
    client.force_login(cast.bob)
    left = client.post(
        f"/app/labs/{cast.lab.uuid}/members/{cast.bob.uuid}/", {"action": "remove"}, follow=True
    )
    assert "You left Alice Lab and revoked 1 API key you made." in left.content.decode()
    assert authorize(gateway, bobs_secret).json()["code"] == "key_revoked"


def test_an_operator_removing_a_membership_in_the_admin_revokes_their_keys(
    admin_client, cast, make_key, gateway
):
    _bobs, bobs_secret = make_key(created_by=cast.bob)
    membership = cast.lab.memberships.get(user=cast.bob)
    response = admin_client.post(
        f"/admin/accounts/membership/{membership.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 302
    assert authorize(gateway, bobs_secret).json()["code"] == "key_revoked"
    assert ApiKey.objects.get(created_by=cast.bob).revoked_by is None  # an operator


def test_the_admin_delete_action_revokes_every_removed_members_keys(
    admin_client, cast, make_key, gateway
):
    _bobs, bobs_secret = make_key(created_by=cast.bob)
    _alices, alices_secret = make_key(created_by=cast.alice)
    bobs = cast.lab.memberships.get(user=cast.bob)
    admin_client.post(
        "/admin/accounts/membership/",
        {"action": "delete_selected", "_selected_action": [bobs.pk], "post": "yes"},
    )
    assert not cast.lab.memberships.filter(user=cast.bob).exists()
    assert authorize(gateway, bobs_secret).json()["code"] == "key_revoked"
    assert authorize(gateway, alices_secret).status_code == 200


def test_deleting_a_membership_in_the_lab_admin_page_revokes_their_keys(
    admin_client, cast, make_key, gateway
):
    _bobs, bobs_secret = make_key(created_by=cast.bob)
    data = lab_admin_form(cast)
    for n in range(int(data["memberships-TOTAL_FORMS"])):
        if data[f"memberships-{n}-user"] == cast.bob.pk:
            data[f"memberships-{n}-DELETE"] = "on"
    response = admin_client.post(f"/admin/accounts/lab/{cast.lab.pk}/change/", data)
    assert response.status_code == 302
    assert not cast.lab.memberships.filter(user=cast.bob).exists()
    assert authorize(gateway, bobs_secret).json()["code"] == "key_revoked"


def test_the_admin_cannot_move_a_membership_to_another_user(admin_client, cast, make_key, gateway):
    _bobs, bobs_secret = make_key(created_by=cast.bob)
    bobs = cast.lab.memberships.get(user=cast.bob)
    admin_client.post(
        f"/admin/accounts/membership/{bobs.pk}/change/",
        {"user": cast.charlie.pk, "lab": cast.charlie_lab.pk, "role": "admin"},
    )
    bobs.refresh_from_db()
    assert (bobs.user, bobs.lab, bobs.role) == (cast.bob, cast.lab, "admin")
    data = lab_admin_form(cast)
    for n in range(int(data["memberships-TOTAL_FORMS"])):
        if data[f"memberships-{n}-user"] == cast.bob.pk:
            data[f"memberships-{n}-user"] = cast.charlie.pk
    admin_client.post(f"/admin/accounts/lab/{cast.lab.pk}/change/", data)
    assert cast.lab.memberships.filter(user=cast.bob).exists()
    assert not cast.lab.memberships.filter(user=cast.charlie).exists()
    assert authorize(gateway, bobs_secret).status_code == 200  # bob is still a member


def lab_admin_form(cast):
    """The lab's admin page as its Save sends it back (billing adds the lab's grants,
    read-only: none sent back)."""
    data = {"name": cast.lab.name, "personal_for": "", "grants-TOTAL_FORMS": 0}
    data["grants-INITIAL_FORMS"] = 0
    for prefix, rows in (
        ("memberships", cast.lab.memberships.order_by("pk")),
        ("projects", cast.lab.projects.order_by("pk")),
    ):
        data |= {f"{prefix}-TOTAL_FORMS": len(rows), f"{prefix}-INITIAL_FORMS": len(rows)}
        for n, row in enumerate(rows):
            data |= {f"{prefix}-{n}-id": row.pk, f"{prefix}-{n}-lab": cast.lab.pk}
            if prefix == "projects":
                data[f"{prefix}-{n}-name"] = row.name
            else:
                data |= {f"{prefix}-{n}-user": row.user_id, f"{prefix}-{n}-role": row.role}
    return data
