"""The world of the tests that walk every page: built once per module, rolled back after it."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.test import override_settings

from tests.conftest import cast_create
from tests.core.world import lab_world


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    offline = override_settings(
        STRIPE_SECRET_KEY="", STRIPE_WEBHOOK_SECRET="", STRIPE_OFFLINE_TEST_MODE=True
    )
    with django_db_blocker.unblock(), transaction.atomic(), offline:
        yield lab_world(cast_create())
        transaction.set_rollback(True)
