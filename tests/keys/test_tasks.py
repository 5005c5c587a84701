"""The keys' periodic work: expiry marks and cap holds given back, by task and by command."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from keys import tasks
from keys.models import ApiKey
from metering.reservations import reservations_expire
from tests.keys.conftest import authorize

pytestmark = pytest.mark.django_db


def test_expired_keys_are_marked_once(make_key, time_machine):
    soon, _ = make_key(expires_at=timezone.now() + timedelta(minutes=5))
    never, _ = make_key()
    assert tasks.keys_expire() == 0
    time_machine.move_to(timezone.now() + timedelta(minutes=6))
    assert tasks.keys_expire() == 1
    assert tasks.keys_expire() == 0
    assert ApiKey.objects.get(pk=soon.pk).expired_at is not None
    assert ApiKey.objects.get(pk=never.pk).expired_at is None


def test_an_expired_reservation_gives_its_cap_hold_back(gateway, make_key, settings):
    key, full = make_key(credit_limit="3")
    assert authorize(gateway, full, units=300).status_code == 200
    assert authorize(gateway, full, units=1).json()["code"] == "key_credit_limit"
    assert (
        reservations_expire(
            now=timezone.now() + timedelta(seconds=settings.RESERVATION_TTL_SECONDS + 1)
        )
        == 1
    )
    out = StringIO()
    call_command("key_holds_release", stdout=out)
    assert out.getvalue().strip() == "1 hold(s) released"
    assert ApiKey.objects.get(pk=key.pk).credit_used == Decimal("0")
    assert authorize(gateway, full, units=300).status_code == 200


def test_the_commands_run(make_key):
    out = StringIO()
    call_command("keys_expire", stdout=out)
    assert "key(s) marked expired" in out.getvalue()
