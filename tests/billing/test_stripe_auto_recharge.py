"""Auto-recharge: one payment per crossing however many debits race, credits only via the
webhook, three failures in a row switch it off, no cost to labs without it."""

import threading
import uuid
from decimal import Decimal

import pytest
from django.core import mail
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from billing import auto_recharge, recharge_trigger, services, topups
from billing.charges import usage_charge
from billing.errors import TopUpError
from billing.models import AutoRecharge, StripeCustomer, TopUp, TopUpKind, TopUpStatus
from billing.selectors import lab_balance, lab_debt
from tests.billing import stripe_fake as sf
from tests.billing.test_stripe_refunds import refund_event
from tests.billing.test_stripe_webhook import start


def card_saved(client, fake, cast):
    """A first Checkout top-up of 30, paid with "save for auto-recharge" ticked."""
    topup = start(cast, amount="30", save=True)
    fake.put(sf.session(topup, intent="pi_first", method="pm_card_visa"))
    sf.deliver(client, sf.event("checkout.session.completed", sf.session(topup)))
    customer = StripeCustomer.objects.get(lab=cast.lab)
    assert (customer.payment_method_id, customer.payment_method_label) == (
        "pm_card_visa",
        "visa •••• 4242",
    )
    return topup


def recharge_on(cast, threshold="20", amount="50", cap="500", project="alpha"):
    return auto_recharge.auto_recharge_set(
        lab=cast.lab,
        actor=cast.alice,
        enabled=True,
        threshold=Decimal(threshold),
        amount=Decimal(amount),
        monthly_cap=Decimal(cap),
        project=getattr(cast, project) if project else None,
    )


def project_balance(cast, name):
    return {p.project.name: p.balance for p in lab_balance(cast.lab).projects}[name]


def intent_paid(client, fake, topup):
    intent = fake.put(
        {
            "id": topup.stripe_payment_intent_id,
            "object": "payment_intent",
            "status": "succeeded",
            "amount": topup.amount_minor,
            "amount_received": topup.amount_minor,
            "currency": topup.currency,
            "metadata": {"topup": str(topup.uuid)},
            "latest_charge": {"id": "ch_auto", "receipt_url": "https://pay.stripe.com/r/auto"},
        }
    )
    return sf.deliver(client, sf.event("payment_intent.succeeded", intent))


@pytest.mark.django_db(transaction=True)
def test_concurrent_debits_crossing_the_threshold_start_exactly_one_payment(
    client, cast, stripe_fake
):
    card_saved(client, stripe_fake, cast)
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="30")
    recharge_on(cast, threshold="20", amount="50")
    assert TopUp.objects.filter(kind=TopUpKind.AUTO).count() == 0  # 30 is not under 20

    barrier = threading.Barrier(12)
    errors = []

    def debit(index):
        try:
            barrier.wait()
            if index % 2:
                usage_charge(project=cast.alpha, amount=Decimal("2"))
            else:
                services.hold_create(project=cast.alpha, amount="2", job_uuid=uuid.uuid4())
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=debit, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert project_balance(cast, "Alpha") == Decimal(6)  # 30 - 12 * 2: well under 20

    payments = stripe_fake.writes("/v1/payment_intents")
    assert len(payments) == 1
    auto = TopUp.objects.get(kind=TopUpKind.AUTO)
    assert payments[0].idempotency_key == f"meterbill-topup-{auto.uuid}-auto-recharge"
    assert payments[0].params["off_session"] == "true"
    assert payments[0].params["payment_method"] == "pm_card_visa"
    assert payments[0].params["amount"] == "5000"
    # Stripe took the money, but credits arrive only with the webhook.
    assert auto.status == TopUpStatus.PENDING and auto.stripe_payment_intent_id
    assert project_balance(cast, "Alpha") == Decimal(6)

    assert intent_paid(client, stripe_fake, auto).status_code == 200
    auto.refresh_from_db()
    assert auto.status == TopUpStatus.PAID and auto.receipt_url == "https://pay.stripe.com/r/auto"
    assert project_balance(cast, "Alpha") == Decimal(56)
    assert mail.outbox[-1].to == ["alice@example.com"]  # the receipt goes to the owners

    # Back above the threshold: another debit starts nothing.
    usage_charge(project=cast.alpha, amount=Decimal("1"))
    assert len(stripe_fake.writes("/v1/payment_intents")) == 1


@pytest.mark.django_db
def test_the_database_refuses_a_second_payment_in_flight(cast):
    def pending():
        return TopUp.objects.create(
            lab=cast.lab,
            kind=TopUpKind.AUTO,
            currency="usd",
            amount_minor=100,
            credits=Decimal(1),
        )

    pending()
    with pytest.raises(IntegrityError), transaction.atomic():
        pending()
    TopUp.objects.update(status=TopUpStatus.FAILED)
    pending()  # once the first is settled, the next may start


@pytest.mark.django_db(transaction=True)
def test_three_declines_in_a_row_switch_it_off_and_mail_the_owner(client, cast, stripe_fake):
    card_saved(client, stripe_fake, cast)
    stripe_fake.decline = True
    mail.outbox.clear()
    recharge_on(cast, threshold="100", amount="10", project=None)  # the lab's balance: 30
    # Switching it on checked at once (30 < 100) and the payment was declined: failure 1.
    for _ in range(2):  # each debit under the threshold tries again: failures 2 and 3
        services.budget_assign(lab=cast.lab, project=cast.beta, amount="1")
    failed = TopUp.objects.filter(kind=TopUpKind.AUTO, status=TopUpStatus.FAILED)
    assert failed.count() == 3
    assert "insufficient funds" in failed.first().failure_message
    setting = AutoRecharge.objects.get(lab=cast.lab)
    assert not setting.enabled and setting.consecutive_failures == 3
    assert "3 failed payments in a row" in setting.disabled_reason
    assert [m.to for m in mail.outbox] == [["alice@example.com"]]
    assert "Auto-recharge switched off" in mail.outbox[0].subject
    # Off now: more debits start nothing.
    services.budget_assign(lab=cast.lab, project=cast.beta, amount="1")
    assert TopUp.objects.filter(kind=TopUpKind.AUTO).count() == 3
    assert lab_balance(cast.lab).balance == Decimal(27)


@pytest.mark.django_db(transaction=True)
def test_a_success_resets_the_failure_count(client, cast, stripe_fake):
    card_saved(client, stripe_fake, cast)
    stripe_fake.decline = True
    recharge_on(cast, threshold="100", amount="10", project=None)  # declined: 1
    stripe_fake.decline = False
    services.budget_assign(lab=cast.lab, project=cast.beta, amount="1")
    auto = TopUp.objects.get(kind=TopUpKind.AUTO, status=TopUpStatus.PENDING)
    intent_paid(client, stripe_fake, auto)
    assert AutoRecharge.objects.get().consecutive_failures == 0


@pytest.mark.django_db
def test_the_monthly_cap_stops_recharges(client, cast, stripe_fake):
    card_saved(client, stripe_fake, cast)  # the lab's balance: 30
    setting = recharge_on(cast, threshold="1000", amount="50", cap="175", project=None)

    def paid(topup):
        TopUp.objects.filter(pk=topup.pk).update(stripe_payment_intent_id=f"pi_{topup.pk}")
        topup.refresh_from_db()
        assert intent_paid(client, stripe_fake, topup).status_code == 200

    # 970 to go: 20 times 50 would restore it; the cap allows 3 times 50 in one payment.
    first = auto_recharge.recharge_start(setting_id=setting.pk)
    assert first.amount_minor == 15000
    assert auto_recharge.recharge_start(setting_id=setting.pk) is None  # one in flight
    topups.topup_fail(topup=first, message="declined")  # does not count toward the cap
    second = auto_recharge.recharge_start(setting_id=setting.pk)
    assert second.amount_minor == 15000
    paid(second)
    assert auto_recharge.month_spent_minor(cast.lab) == 15000
    assert auto_recharge.recharge_start(setting_id=setting.pk) is None  # 25 left: not 50
    assert lab_balance(cast.lab).balance == Decimal(180)


@pytest.mark.django_db
def test_switching_it_on_needs_a_saved_card_and_an_owner(client, cast, offline):
    with pytest.raises(TopUpError, match="Save a payment method first"):
        recharge_on(cast)
    client.force_login(cast.bob)
    form = {"enabled": "on", "threshold": "5", "amount": "25", "monthly_cap": "100"}
    url = f"/app/labs/{cast.lab.uuid}/billing/auto-recharge/"
    assert client.post(url, form).status_code == 403
    client.force_login(cast.alice)
    page = client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
    assert 'disabled data-testid="auto-recharge-waits"' in page  # nothing to charge yet
    refused = client.post(url, form)
    assert refused.status_code == 400 and "Save a payment method first" in refused.content.decode()
    bad = client.post(url, {**form, "monthly_cap": "10"})
    assert "The monthly cap must be at least the amount." in bad.content.decode()
    assert AutoRecharge.objects.count() == 0
    off = client.post(url, {**form, "enabled": ""})
    assert off.status_code == 302 and not AutoRecharge.objects.get().enabled


@pytest.mark.django_db
def test_debits_of_accounts_without_auto_recharge_cost_no_query(client, cast, stripe_fake):
    services.lab_top_up(lab=cast.lab, amount="100")
    services.budget_assign(lab=cast.lab, project=cast.beta, amount="50")

    def hold_queries():
        recharge_trigger.targets_forget()
        services.hold_create(project=cast.beta, amount="1", job_uuid=uuid.uuid4())  # warm
        with CaptureQueriesContext(connection) as captured:
            services.hold_create(project=cast.beta, amount="1", job_uuid=uuid.uuid4())
            usage_charge(project=cast.beta, amount=Decimal("1"))
        return [q["sql"] for q in captured.captured_queries]

    without = hold_queries()
    card_saved(client, stripe_fake, cast)
    recharge_on(cast, threshold="1000", project="alpha")  # another account of the same lab
    with_other = hold_queries()
    assert len(with_other) == len(without)
    assert not any("autorecharge" in sql or "billing_topup" in sql for sql in with_other)


@pytest.mark.django_db(transaction=True)
def test_auto_recharge_works_offline_through_the_signed_webhook(client, cast, offline):
    client.force_login(cast.alice)
    client.post(
        f"/app/labs/{cast.lab.uuid}/billing/top-up/", {"preset": "10", "save_payment_method": "on"}
    )
    topup = TopUp.objects.get()
    client.post(
        f"/app/labs/{cast.lab.uuid}/billing/top-ups/{topup.uuid}/test-checkout/",
        {"outcome": "pay"},
    )
    response = client.post(
        f"/app/labs/{cast.lab.uuid}/billing/auto-recharge/",
        {"enabled": "on", "threshold": "15", "amount": "20", "monthly_cap": "100"},
    )
    assert response.status_code == 302
    # On at once: 10 < 15, so it paid 20 with the test card.
    auto = TopUp.objects.get(kind=TopUpKind.AUTO)
    assert auto.status == TopUpStatus.PAID and auto.stripe_payment_intent_id.startswith("pi_local")
    assert lab_balance(cast.lab).balance == Decimal(30)
    page = client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
    assert 'data-testid="auto-recharge-state">on<' in page


@pytest.mark.django_db(transaction=True)
def test_the_sweep_catches_a_crossing_the_debit_did_not_see(client, cast, stripe_fake, settings):
    card_saved(client, stripe_fake, cast)
    settings.AUTO_RECHARGE_TARGETS_TTL_SECONDS = 3600
    recharge_trigger._targets_now()  # this process read the list before auto-recharge existed
    setting = AutoRecharge.objects.create(
        lab=cast.lab,
        enabled=True,
        threshold=Decimal(50),
        currency="usd",
        amount_minor=2500,
        monthly_cap_minor=10000,
    )  # as if another process had just switched it on
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="1")
    assert TopUp.objects.filter(kind=TopUpKind.AUTO).count() == 0  # the stale list missed it
    assert auto_recharge.auto_recharge_sweep() == 1
    assert TopUp.objects.get(kind=TopUpKind.AUTO).amount_minor == setting.amount_minor
    assert len(stripe_fake.writes("/v1/payment_intents")) == 1


@pytest.mark.django_db
def test_the_auto_recharge_form_opens_once_a_card_is_saved(client, cast, stripe_fake):
    card_saved(client, stripe_fake, cast)
    client.force_login(cast.alice)
    page = client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
    assert "Saved payment method: visa •••• 4242." in page
    assert 'data-testid="auto-recharge-form"' in page and "auto-recharge-waits" not in page


def pay_pending(client, fake):
    for topup in TopUp.objects.filter(kind=TopUpKind.AUTO, status=TopUpStatus.PENDING):
        assert intent_paid(client, fake, topup).status_code == 200


def auto_paid_minor():
    return list(
        TopUp.objects.filter(kind=TopUpKind.AUTO)
        .order_by("pk")
        .values_list("amount_minor", flat=True)
    )


@pytest.mark.django_db(transaction=True)
def test_one_payment_restores_the_threshold_and_the_next_waits_for_spending(
    client, cast, stripe_fake
):
    """An amount of 10 under a threshold of 100 pays as many tens as the gap needs, once; it
    used to pay 10 at every sweep until the balance was back."""
    card_saved(client, stripe_fake, cast)  # the lab's balance: 30
    recharge_on(cast, threshold="100", amount="10", cap="1000", project=None)
    pay_pending(client, stripe_fake)  # switching it on paid 70 at once
    assert (auto_paid_minor(), lab_balance(cast.lab).balance) == ([7000], Decimal(100))
    for _ in range(3):
        assert auto_recharge.auto_recharge_sweep() == 0

    services.budget_assign(lab=cast.lab, project=cast.beta, amount="5")  # 95: pays 10
    pay_pending(client, stripe_fake)
    services.budget_assign(lab=cast.lab, project=cast.beta, amount="50.5")  # 54.5: pays 50
    pay_pending(client, stripe_fake)
    assert (auto_paid_minor(), lab_balance(cast.lab).balance) == (
        [7000, 1000, 5000],
        Decimal("104.5"),
    )
    assert auto_recharge.auto_recharge_sweep() == 0

    # Taking credits back is not spending: an operator's depletion charges nothing.
    services.lab_deplete(lab=cast.lab)
    assert lab_balance(cast.lab).balance == 0
    assert auto_recharge.auto_recharge_sweep() == 0
    assert len(auto_paid_minor()) == 3

    # Saving the settings again may pay at once (it is the owner's fresh decision); a declined
    # payment paid nothing, so the next sweep tries again without waiting for spending.
    stripe_fake.decline = True
    recharge_on(cast, threshold="100", amount="10", cap="1000", project=None)
    assert TopUp.objects.get(kind=TopUpKind.AUTO, status=TopUpStatus.FAILED).amount_minor == 10000
    stripe_fake.decline = False
    assert auto_recharge.auto_recharge_sweep() == 1
    assert auto_paid_minor() == [7000, 1000, 5000, 10000, 10000]
    assert len(stripe_fake.writes("/v1/payment_intents")) == 5


@pytest.mark.django_db(transaction=True)
def test_spending_that_commits_while_a_recharge_starts_counts_for_the_next(
    client, cast, stripe_fake, monkeypatch
):
    """The mark is read before the balance: a debit committing in between is past the mark,
    not lost under it (found by review: it was read after)."""
    card_saved(client, stripe_fake, cast)  # the lab's balance: 30
    recharge_on(cast, threshold="25", amount="10", cap="1000", project=None)  # 30: nothing
    monkeypatch.setattr(recharge_trigger, "debited", lambda refs: None)  # checks run by hand
    services.budget_assign(lab=cast.lab, project=cast.beta, amount="10")  # 20
    setting = AutoRecharge.objects.get()
    create = topups.topup_create

    def create_while_another_spends(**kwargs):
        def spend():
            try:
                services.budget_assign(lab=cast.lab, project=cast.beta, amount="10")
            finally:
                connection.close()

        other = threading.Thread(target=spend)
        other.start()
        other.join()
        return create(**kwargs)

    monkeypatch.setattr(topups, "topup_create", create_while_another_spends)
    assert auto_recharge.recharge_start(setting_id=setting.pk).amount_minor == 1000
    monkeypatch.setattr(topups, "topup_create", create)
    pay_pending(client, stripe_fake)
    assert lab_balance(cast.lab).balance == Decimal(20)  # the other spend took it under again
    assert auto_recharge.auto_recharge_sweep() == 1


@pytest.mark.django_db(transaction=True)
def test_a_recharge_also_covers_the_debt_it_repays_first(client, cast, stripe_fake):
    """A payment repays the lab's debt before anything else: sized on the gap alone, it left
    the project under the threshold for good (found by review)."""
    first = card_saved(client, stripe_fake, cast)
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="30")
    usage_charge(project=cast.alpha, amount=Decimal("30"))  # Alpha: 0
    refund_event(client, stripe_fake, first, refunded_minor=3000)  # the 30 spent is now owed
    assert lab_debt(lab=cast.lab) == Decimal(30)
    recharge_on(cast, threshold="20", amount="10", cap="1000", project="alpha")
    pay_pending(client, stripe_fake)
    assert auto_paid_minor() == [5000]  # 30 of debt and 20 of gap
    assert (lab_debt(lab=cast.lab), project_balance(cast, "Alpha")) == (0, Decimal(20))


@pytest.mark.django_db(transaction=True)
def test_a_balance_lowered_by_no_spending_waits_for_spending(client, cast, stripe_fake):
    """Seen at or above the threshold, a balance an operator or an expiry takes under it is not
    recharged until the lab spends."""
    card_saved(client, stripe_fake, cast)  # the lab's balance: 30
    recharge_on(cast, threshold="20", amount="10", cap="1000", project=None)  # seen at 30
    services.lab_deplete(lab=cast.lab)
    assert auto_recharge.auto_recharge_sweep() == 0 and auto_paid_minor() == []
    services.lab_top_up(lab=cast.lab, amount="5")
    services.budget_assign(lab=cast.lab, project=cast.beta, amount="1")  # spending: 4
    pay_pending(client, stripe_fake)
    assert (auto_paid_minor(), lab_balance(cast.lab).balance) == ([2000], Decimal(24))
