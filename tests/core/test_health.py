import pytest
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import OperationalError


@pytest.mark.django_db
def test_health_answers_without_touching_anything(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_ready_is_200_when_database_and_redis_answer(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


@pytest.mark.django_db
def test_ready_is_503_when_redis_is_down(client, settings):
    from devstack.services import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "redis": "down"}


@pytest.mark.django_db
def test_ready_is_503_when_the_database_is_down(client):
    def refuse(self):
        raise OperationalError("connection refused")

    # The database going away is simulated at the driver boundary: connecting fails.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BaseDatabaseWrapper, "ensure_connection", refuse)
        response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "down", "redis": "ok"}


def test_the_accounting_services_utility_routes_answer_as_it_does(client, settings):
    """Monitoring written for the accounting-service keeps working under /api/accounting/."""
    settings.APP_VERSION, settings.COMMIT_SHA = "1.2.3", "abc123"
    health = client.get("/api/accounting/health")
    assert (health.status_code, health.json()) == (200, {"status": "OK"})
    version = client.get("/api/accounting/version").json()
    assert version == {"app_name": "meterbill", "app_version": "1.2.3", "commit_sha": "abc123"}
    root = client.get("/api/accounting/")
    assert (root.status_code, root["Location"]) == (302, "/api/docs/")


def test_the_api_docs_state_the_version_the_version_route_does(client, settings):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    assert schema.json()["info"]["version"] == settings.APP_VERSION
