"""The labs API through the cast: members see Alice Lab, the outsider never does."""

import uuid

import pytest


def _lab_ids(response):
    return {lab["id"] for lab in response.json()}


@pytest.mark.django_db
def test_owner_and_member_list_the_lab_with_its_projects(api_client, cast):
    for person, role in [(cast.alice, "owner"), (cast.bob, "member")]:
        api_client.force_login(person)
        response = api_client.get("/api/v1/labs/")
        assert response.status_code == 200
        labs = {lab["id"]: lab for lab in response.json()}
        lab = labs[str(cast.lab.uuid)]
        assert lab["role"] == role
        assert {p["name"] for p in lab["projects"]} == {"Alpha", "Beta"}


@pytest.mark.django_db
def test_outsider_sees_none_of_another_users_labs_or_projects(api_client, cast):
    api_client.force_login(cast.charlie)
    listed = api_client.get("/api/v1/labs/")
    assert _lab_ids(listed) == {str(cast.charlie_lab.uuid)}
    for path in [
        f"/api/v1/labs/{cast.lab.uuid}/",
        f"/api/v1/projects/{cast.alpha.uuid}/",
        f"/api/v1/labs/{cast.alice.personal_lab.uuid}/",
    ]:
        response = api_client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error_code"] == "ENTITY_NOT_FOUND"
        assert "Alice" not in response.content.decode()


@pytest.mark.django_db
def test_unknown_ids_are_404_not_500(api_client, cast):
    api_client.force_login(cast.alice)
    assert api_client.get(f"/api/v1/labs/{uuid.uuid4()}/").status_code == 404
    assert api_client.get("/api/v1/labs/not-a-uuid/").status_code == 404


@pytest.mark.django_db
def test_member_reads_a_project(api_client, cast):
    api_client.force_login(cast.bob)
    response = api_client.get(f"/api/v1/projects/{cast.alpha.uuid}/")
    assert response.status_code == 200
    assert response.json()["lab_id"] == str(cast.lab.uuid)


@pytest.mark.django_db
def test_lab_bound_token_sees_only_its_lab(token_client, cast):
    client = token_client(["labs"], lab=cast.charlie_lab)
    assert _lab_ids(client.get("/api/v1/labs/")) == {str(cast.charlie_lab.uuid)}
    assert client.get(f"/api/v1/labs/{cast.lab.uuid}/").status_code == 404
    assert client.get(f"/api/v1/projects/{cast.beta.uuid}/").status_code == 404


@pytest.mark.django_db
def test_global_token_sees_every_lab(token_client, cast):
    client = token_client(["labs"])
    assert {str(cast.lab.uuid), str(cast.charlie_lab.uuid)} <= _lab_ids(client.get("/api/v1/labs/"))
    assert client.get(f"/api/v1/projects/{cast.beta.uuid}/").status_code == 200


@pytest.mark.django_db
def test_inactive_user_sees_nothing(api_client, cast):
    api_client.force_login(cast.bob)
    cast.bob.is_active = False
    cast.bob.save()
    assert api_client.get("/api/v1/labs/").status_code in (401, 403)
