"""The fixed cast of every access test:

- alice owns "Alice Lab" (projects "Alpha" and "Beta"),
- bob is a plain member of Alice Lab,
- charlie is an outsider with a lab of his own; nothing of Alice Lab may ever reach him.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from allauth.account.models import EmailAddress
from django.core.cache import cache
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import Lab, Project, Role, User
from accounts.services import (
    lab_create,
    membership_add,
    project_create,
    service_token_create,
    user_create,
)
from tests.celery_worker import celery_worker

PASSWORD = "correct-horse-battery"


@pytest.fixture(autouse=True)
def _clean_cache():
    # Rate-limit counters live in the Redis cache; each test starts without them.
    cache.clear()
    yield


@pytest.fixture(autouse=True)
def _ledger_audit(request):
    """After every test that touched the database, the ledger's invariants must hold."""
    uses_db = bool(request.node.get_closest_marker("django_db"))
    for name in ("transactional_db", "db"):
        if not uses_db and name in request.fixturenames:
            # Set the database up before this fixture, so it is still there at teardown.
            request.getfixturevalue(name)
            uses_db = True
    yield
    if uses_db and not request.node.get_closest_marker("ledger_broken_on_purpose"):
        from billing.audit import ledger_audit

        assert ledger_audit() == []


def _verified_user(email: str, name: str) -> User:
    user = user_create(email=email, password=PASSWORD, name=name)
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


@dataclass
class Cast:
    alice: User
    bob: User
    charlie: User
    lab: Lab
    alpha: Project
    beta: Project
    charlie_lab: Lab


@pytest.fixture
def cast(db) -> Cast:
    return cast_create()


def cast_create() -> Cast:
    """The cast's users and labs (the fixture's, for a caller that needs them outside it)."""
    alice = _verified_user("alice@example.com", "Alice")
    bob = _verified_user("bob@example.com", "Bob")
    charlie = _verified_user("charlie@example.com", "Charlie")
    lab = lab_create(name="Alice Lab", owner=alice)
    membership_add(lab=lab, user=bob, role=Role.MEMBER)
    return Cast(
        alice=alice,
        bob=bob,
        charlie=charlie,
        lab=lab,
        alpha=project_create(lab=lab, name="Alpha"),
        beta=project_create(lab=lab, name="Beta"),
        charlie_lab=Lab.objects.get(personal_for=charlie),
    )


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def token_client():
    """An API client authenticated with a new service token: token_client(scopes, lab=None)."""

    def make(scopes: list[str], lab: Lab | None = None) -> APIClient:
        _token, plain = service_token_create(name="test", scopes=scopes, lab=lab)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {plain}")
        return client

    return make


@pytest.fixture
def worker_on_the_test_database():
    """A real Celery worker process whose Django uses this test's database."""
    url = urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{connection.settings_dict['NAME']}")
    with celery_worker(DATABASE_URL=url.geturl()) as process:
        yield process
