"""The every-route sweep's world: Alice Lab with one of everything, for tests that walk every
page (tests/core/conftest.py builds it once per module)."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from unittest import mock

from django.utils import timezone

from accounts.models import Role
from accounts.services import invitation_create
from billing import balance_alerts, test_mode, topups
from billing import services as billing
from keys.services import key_create, key_settings_validate
from metering.models import ServiceType
from metering.reservations import reservation_create
from metering.services import discount_create
from tests.conftest import Cast
from tests.keys.test_quotas import plan_with_quotas
from tests.metering.test_reservations import priced_service

FRESH_ID = "f7e5f7e5-0000-4000-8000-000000000000"  # a request's event id: a new one each time


def lab_world(cast: Cast) -> SimpleNamespace:
    """Alice Lab with one of everything: keys, jobs, top-ups (one paid, one pending, with the
    Stripe event that would complete it), a plan with quotas, a discount, an alert and an
    invitation; and Charlie's API key."""
    llm, sim = priced_service("ml-llm"), priced_service("sim", ServiceType.LONGRUN)
    billing.budget_grant(project=cast.alpha, amount="100")
    plan_with_quotas(cast.lab, cast.alpha, {None: 100, llm: 50})
    discount_create(lab=cast.lab, discount=Decimal("0.1"), valid_from=timezone.now())

    def new_key(project, name):
        owner = project.lab.memberships.get(role=Role.OWNER).user
        settings = key_settings_validate(services=None, limits=None)
        return key_create(project=project, name=name, key_settings=settings, created_by=owner)

    def checkout(amount):
        topup = topups.topup_create(lab=cast.lab, amount=Decimal(amount), actor=cast.alice)
        topups.checkout_start(topup=topup, success_url="/", cancel_url="/", test_mode_url="/")
        return topup

    key, full_key = new_key(cast.alpha, "Alpha gateway key")
    charlie_key = new_key(cast.charlie_lab.projects.get(), "Charlie key")[1]
    paid, pending = checkout("42"), checkout("17")
    test_mode.checkout_complete(topup=paid)
    with mock.patch.object(test_mode, "_deliver", lambda kind, obj: (kind, obj)):  # not sent
        kind, checkout_session = test_mode.checkout_complete(topup=pending)
    stripe_event = {"id": f"evt_{FRESH_ID}", "type": kind, "data": {"object": checkout_session}}
    job = reservation_create(project=cast.alpha, service=llm, quantity=10, params={})
    longrun = reservation_create(
        project=cast.alpha, service=sim, quantity=60, params={"instances": 1, "duration": 60}
    )
    alert = balance_alerts.alert_add(
        lab=cast.lab, project=None, threshold=Decimal(5), actor=cast.alice
    )
    invitation = invitation_create(
        lab=cast.lab, email="dave@example.com", role=Role.MEMBER, by=cast.alice
    )
    return SimpleNamespace(**{k: v for k, v in locals().items() if not callable(v)})
