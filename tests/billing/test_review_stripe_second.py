"""Second review of the Stripe top-ups (issue 7): what the first review did not probe. Each test
names the behaviour that should hold and fails because of a defect in the code."""

from __future__ import annotations

import smtplib
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing import services, tasks
from billing.models import StripeCustomer, TopUp, TopUpStatus
from billing.selectors import lab_balance, lab_debt
from config.celery import app
from core import mail as core_mail
from tests.billing import stripe_fake as sf
from tests.billing.test_stripe_auto_recharge import card_saved, recharge_on
from tests.billing.test_stripe_reconcile import listed_charge, listed_session
from tests.billing.test_stripe_refunds import paid, refund_event
from tests.billing.test_stripe_webhook import start

# Reconciliation -------------------------------------------------------------------------------


def _stripe_filters_by_created(fake, monkeypatch):
    """Stripe's list endpoints return only objects with created >= created[gte]."""
    answer = fake._answer

    def windowed(method, path, params):
        if method == "GET" and path in fake.listed and "created[gte]" in params:
            everything = fake.listed[path]
            fake.listed[path] = [
                o for o in everything if o["created"] >= int(params["created[gte]"])
            ]
            try:
                return answer(method, path, params)
            finally:
                fake.listed[path] = everything
        return answer(method, path, params)

    monkeypatch.setattr(fake, "_answer", windowed)


def _created(obj, when):
    return {**obj, "created": int(when.timestamp())}


@pytest.mark.django_db
def test_reconcile_does_not_flag_a_bank_debit_that_succeeded_days_after_its_checkout(
    client, cast, stripe_fake, monkeypatch, capsys
):
    """reconcile.py:27 lists Stripe objects created at most one day before --since, so a top-up
    paid since then whose (async) payment started earlier is reported as unknown to Stripe."""
    _stripe_filters_by_created(stripe_fake, monkeypatch)
    topup = paid(client, stripe_fake, cast, amount="25")  # async_payment_succeeded: paid now
    started = timezone.now() - timedelta(days=4)  # the SEPA/ACH debit was confirmed 4 days ago
    intent = topup.stripe_payment_intent_id
    stripe_fake.listed["/v1/checkout/sessions"] = [
        _created(listed_session(topup, intent=intent), started)
    ]
    stripe_fake.listed["/v1/charges"] = [_created(listed_charge(intent, str(topup.uuid)), started)]
    since = (timezone.now() - timedelta(days=1)).isoformat()
    call_command("stripe_reconcile", "--since", since)  # raises: "1 mismatch(es)"
    assert "agree" in capsys.readouterr().out


@pytest.mark.django_db
def test_reconcile_reports_a_lost_payment_that_was_paid_after_since_but_started_before(
    client, cast, stripe_fake, monkeypatch, capsys
):
    """reconcile.py:31 skips every paid Stripe object created before --since, so a payment that
    started before it and succeeded after it, with its webhook lost, is never reported by a run
    --since the previous run (it was not paid yet then)."""
    _stripe_filters_by_created(stripe_fake, monkeypatch)
    lost = start(cast, amount="25")  # paid at Stripe today; its webhook never came
    since = timezone.now() - timedelta(days=1)
    started = since - timedelta(hours=3)  # the bank debit was confirmed before --since
    stripe_fake.listed["/v1/checkout/sessions"] = [
        _created(listed_session(lost, intent="pi_lost"), started)
    ]
    stripe_fake.listed["/v1/charges"] = [
        _created(listed_charge("pi_lost", str(lost.uuid)), started)
    ]
    with pytest.raises(CommandError, match="mismatch"):
        call_command("stripe_reconcile", "--since", since.isoformat())
    assert str(lost.uuid) in capsys.readouterr().err


@pytest.mark.django_db
@pytest.mark.parametrize("since", ["0001-01-01", "0001-01-01T12:00:00+00:00"])
def test_reconcile_answers_a_date_out_of_range_with_a_command_error(stripe_fake, since):
    """reconcile.py:27 computes since - 1 day, which overflows for the first day of year 1: an
    OverflowError traceback instead of a CommandError."""
    with pytest.raises(CommandError):
        call_command("stripe_reconcile", "--since", since)


# Receipt mail -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_receipt_whose_mail_server_failed_once_is_sent_by_the_retry(
    client, cast, stripe_fake, monkeypatch
):
    """receipts.py:75 resets receipt_sent_at "to let the retry send it", but the task only
    retries database and Stripe errors (tasks.py:14): after one SMTP error no receipt ever goes."""
    app.conf.task_eager_propagates = False  # retries run, as on a worker (restored by conftest)
    topup = paid(client, stripe_fake, cast, amount="25")
    real_send, calls = core_mail.send_mail, []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return real_send(*args, **kwargs)

    monkeypatch.setattr(core_mail, "send_mail", flaky)
    tasks.topup_receipt_send.delay(topup.pk)
    topup.refresh_from_db()
    assert len(mail.outbox) == 1 and topup.receipt_sent_at is not None


# The billing page ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_auto_recharge_form_shows_the_saved_threshold_as_a_plain_number(
    client, cast, stripe_fake
):
    """topup_views.py:44 shows Decimal.normalize() of the threshold: 100 credits read "1E+2"."""
    card_saved(client, stripe_fake, cast)
    recharge_on(cast, threshold="100", amount="50", cap="500", project=None)
    client.force_login(cast.alice)
    page = client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
    assert 'name="threshold" value="100"' in page
    assert "1E+2" not in page


# Refunds after an operator took the credits back ------------------------------------------


@pytest.mark.django_db
def test_a_refund_of_a_voided_top_up_grant_records_no_debt(client, cast, stripe_fake):
    """topups.py:321 counts every credit of the refund not found in the grant as spent: credits
    an operator already voided (none used) become a debt that the lab's next top-up repays."""
    topup = paid(client, stripe_fake, cast, amount="100")
    services.grant_void(grant=topup.grant, reason="paid twice by mistake")
    assert lab_balance(cast.lab).balance == Decimal(0)
    refund_event(client, stripe_fake, topup, refunded_minor=10000)
    assert lab_debt(lab=cast.lab) == Decimal(0)  # the lab spent none of it
    paid(client, stripe_fake, cast, amount="20")
    assert lab_balance(cast.lab).balance == Decimal(20)


# Who sets the card auto-recharge charges ----------------------------------------------------


@pytest.mark.django_db
def test_a_plain_member_cannot_replace_the_card_auto_recharge_charges(client, cast, stripe_fake):
    """topups.py:230 saves the payment method of any top-up with the box ticked, so bob (a plain
    member, who may not set auto-recharge) swaps the owner's card for his own."""
    card_saved(client, stripe_fake, cast)  # alice's visa, saved for auto-recharge
    recharge_on(cast, project=None)
    client.force_login(cast.bob)
    response = client.post(
        f"/app/labs/{cast.lab.uuid}/billing/top-up/", {"preset": "10", "save_payment_method": "on"}
    )
    assert response.status_code == 302
    topup = TopUp.objects.filter(created_by=cast.bob).get()
    stripe_fake.put(sf.session(topup, intent="pi_bob", method="pm_bob_card"))
    sf.deliver(client, sf.event("checkout.session.completed", sf.session(topup)))
    topup.refresh_from_db()
    assert topup.status == TopUpStatus.PAID
    assert StripeCustomer.objects.get(lab=cast.lab).payment_method_id == "pm_card_visa"
