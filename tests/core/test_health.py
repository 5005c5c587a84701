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
