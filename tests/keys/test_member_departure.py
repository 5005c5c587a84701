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
