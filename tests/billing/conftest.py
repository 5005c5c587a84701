"""Billing fixtures: Stripe faked at the HTTP boundary, Celery run inline, fresh auto-recharge
target lists."""

from __future__ import annotations

import pytest

from billing import recharge_trigger, stripe_gateway
from config.celery import app
from tests.billing.stripe_fake import WEBHOOK_SECRET, FakeStripe


@pytest.fixture(autouse=True)
def _fresh_recharge_targets():
    recharge_trigger.targets_forget()
    yield
    recharge_trigger.targets_forget()


@pytest.fixture(autouse=True)
def _tasks_inline():
    """Tasks enqueued after commit run in the test's process, not on the shared broker."""
    eager, propagates = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = eager, propagates


@pytest.fixture
def stripe_fake(settings):
    """Stripe test keys set, every request answered by a FakeStripe."""
    settings.STRIPE_SECRET_KEY = "sk_test_fake"
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    fake = FakeStripe()
    with stripe_gateway.transport_replaced(fake):
        yield fake


@pytest.fixture
def offline(settings):
    """No Stripe keys: the offline test mode, with the webhook secret derived locally."""
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""
    settings.STRIPE_OFFLINE_TEST_MODE = True
    with stripe_gateway.transport_replaced(_no_network):
        yield


def _no_network(*args):
    raise AssertionError("offline test mode must not call Stripe")
