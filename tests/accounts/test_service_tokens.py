import pytest
from django.core.management import CommandError, call_command

from accounts.models import ServiceToken
from accounts.services import service_token_create, service_token_revoke
from core.secrets import secret_hash


@pytest.mark.django_db
def test_only_a_peppered_hash_of_the_secret_is_stored():
    token, plain = service_token_create(name="gw", scopes=["accounting"])
    secret = plain.removeprefix("st_").partition("_")[2]
    stored = ServiceToken.objects.get(pk=token.pk)
    assert plain.startswith(f"st_{stored.lookup_id}_")
    assert secret not in stored.secret_hash
    assert stored.secret_hash == secret_hash(secret)


@pytest.mark.django_db
def test_it_rejects_unknown_or_missing_scopes():
    from accounts.errors import InvalidScopeError

    with pytest.raises(InvalidScopeError):
        service_token_create(name="gw", scopes=["accounting", "root"])
    with pytest.raises(InvalidScopeError):
        service_token_create(name="gw", scopes=[" "])
    assert ServiceToken.objects.count() == 0


@pytest.mark.django_db
def test_command_prints_the_token_once_and_it_authenticates(capsys, api_client):
    call_command("create_service_token", "gateway", "--scopes", "labs,usage")
    plain = capsys.readouterr().out.strip()
    token = ServiceToken.objects.get()
    assert token.scopes == ["labs", "usage"]
    assert token.lab is None
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {plain}")
    assert api_client.get("/api/v1/labs/").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None


@pytest.mark.django_db
def test_command_refuses_bad_scopes_and_unknown_labs():
    with pytest.raises(CommandError, match="Unknown scope"):
        call_command("create_service_token", "gw", "--scopes", "nope")
    with pytest.raises(CommandError, match="No lab"):
        call_command("create_service_token", "gw", "--scopes", "labs", "--lab", "not-a-uuid")
    assert ServiceToken.objects.count() == 0


@pytest.mark.django_db
def test_command_binds_a_token_to_a_lab(cast, capsys):
    call_command("create_service_token", "lab-bot", "--scopes", "labs", "--lab", str(cast.lab.uuid))
    assert ServiceToken.objects.get().lab == cast.lab


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header",
    [
        "Bearer st_unknown_secret",
        "Bearer st_",
        "Bearer sk_live_something",
        "Bearer two parts",
        "Bearer",
    ],
)
def test_malformed_or_unknown_tokens_get_401_in_the_error_shape(api_client, header):
    api_client.credentials(HTTP_AUTHORIZATION=header)
    response = api_client.get("/api/v1/labs/")
    assert response.status_code == 401
    body = response.json()
    assert body["error_code"] == "UNAUTHORIZED"
    assert set(body) == {"error_code", "message", "details"}
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.django_db
def test_a_wrong_secret_for_a_real_lookup_id_is_refused(api_client):
    token, _plain = service_token_create(name="gw", scopes=["labs"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer st_{token.lookup_id}_wrong")
    assert api_client.get("/api/v1/labs/").status_code == 401


@pytest.mark.django_db
def test_a_revoked_token_is_refused_and_revoking_twice_keeps_the_first_time(api_client):
    token, plain = service_token_create(name="gw", scopes=["labs"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {plain}")
    assert api_client.get("/api/v1/labs/").status_code == 200
    first = service_token_revoke(token=token).revoked_at
    assert service_token_revoke(token=token).revoked_at == first
    response = api_client.get("/api/v1/labs/")
    assert response.status_code == 401
    assert response.json()["message"] == "Invalid or revoked service token."


@pytest.mark.django_db
def test_a_token_without_the_scope_gets_403(token_client):
    response = token_client(["usage"]).get("/api/v1/labs/")
    assert response.status_code == 403
    assert response.json()["error_code"] == "FORBIDDEN"
    assert "'labs' scope" in response.json()["message"]


@pytest.mark.django_db
def test_no_credentials_get_401(api_client):
    response = api_client.get("/api/v1/labs/")
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHORIZED"
