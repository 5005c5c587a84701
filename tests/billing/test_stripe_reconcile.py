"""stripe_reconcile: Stripe's paid objects against our grants, both ways."""

import time

import pytest
from django.core.management import CommandError, call_command

from billing import services
from billing.models import GrantSource
from tests.billing import stripe_fake as sf
from tests.billing.test_stripe_refunds import paid
from tests.billing.test_stripe_webhook import start


def listed_session(topup, *, intent):
    return {
        **sf.session(topup, intent=None),
        "payment_intent": intent,
        "created": int(time.time()),
        "invoice": None,
    }


def listed_charge(intent, topup_uuid, amount=2500):
    return {
        "id": f"ch_{intent}",
        "object": "charge",
        "amount": amount,
        "currency": "usd",
        "paid": True,
        "status": "succeeded",
        "created": int(time.time()),
        "payment_intent": {"id": intent, "metadata": {"topup": topup_uuid}},
    }


@pytest.mark.django_db
def test_it_lists_paid_stripe_objects_without_a_grant_and_grants_without_one(
    client, cast, stripe_fake, capsys
):
    good = paid(client, stripe_fake, cast, amount="25")
    lost = start(cast, amount="25")  # paid at Stripe, but its webhook never came
    unseen = paid(client, stripe_fake, cast, amount="25")  # granted, unknown to Stripe
    services.lab_top_up(lab=cast.lab, amount="5", source=GrantSource.STRIPE)  # no top-up
    stripe_fake.listed["/v1/checkout/sessions"] = [
        listed_session(good, intent=good.stripe_payment_intent_id),
        listed_session(lost, intent="pi_lost"),
    ]
    stripe_fake.listed["/v1/charges"] = [
        listed_charge(good.stripe_payment_intent_id, str(good.uuid)),
        listed_charge("pi_lost", str(lost.uuid)),
    ]
    with pytest.raises(CommandError, match="4 mismatch"):
        call_command("stripe_reconcile", "--since", "2000-01-01")
    report = capsys.readouterr().err
    assert (
        f"session {lost.stripe_session_id}" in report and f"top-up {lost.uuid} is pending" in report
    )
    assert "charge ch_pi_lost" in report
    assert f"top-up {unseen.uuid} granted 25" in report
    assert "says Stripe but has no top-up" in report
    assert str(good.uuid) not in report
    listed = [r for r in stripe_fake.requests if r.method == "GET" and r.path == "/v1/charges"]
    assert listed and listed[0].params["created[gte]"]


@pytest.mark.django_db
def test_it_is_quiet_when_stripe_and_the_ledger_agree(client, cast, stripe_fake, capsys):
    good = paid(client, stripe_fake, cast, amount="25")
    stripe_fake.listed["/v1/checkout/sessions"] = [
        listed_session(good, intent=good.stripe_payment_intent_id)
    ]
    stripe_fake.listed["/v1/charges"] = [
        listed_charge(good.stripe_payment_intent_id, str(good.uuid))
    ]
    call_command("stripe_reconcile", "--since", "2000-01-01")
    assert "agree" in capsys.readouterr().out


@pytest.mark.django_db
def test_it_needs_a_date(stripe_fake):
    with pytest.raises(CommandError):
        call_command("stripe_reconcile", "--since", "yesterday")
