"""Low-balance alerts: one mail to the lab's owners and admins for each fall under the
threshold, armed again when the balance is back; set and removed by owners and admins only."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core import mail

from accounts.models import Role
from accounts.services import membership_add, user_create
from billing import services
from billing.balance_alerts import MAX_ALERTS_PER_LAB, alert_add, balance_alerts_sweep
from billing.models import BalanceAlert
from config.celery import app
from tests.billing.test_concurrency import run_threads


def alert_mails():
    return [m for m in mail.outbox if m.subject.startswith("[Meterbill] Low balance")]


@pytest.mark.django_db
def test_one_mail_per_fall_under_the_threshold_to_owners_and_admins(
    cast, django_capture_on_commit_callbacks
):
    admin = user_create(email="dana@example.com", password="dana-pass-12345")
    membership_add(lab=cast.lab, user=admin, role=Role.ADMIN)
    services.lab_top_up(lab=cast.lab, amount="100")
    alert_add(lab=cast.lab, project=None, threshold="50", actor=cast.alice)

    def sweep():
        with django_capture_on_commit_callbacks(execute=True):
            return balance_alerts_sweep()

    assert sweep() == 0 and alert_mails() == []
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="60")  # the lab: 40
    assert sweep() == 1
    (sent,) = alert_mails()
    assert sorted(sent.to) == ["alice@example.com", "dana@example.com"]  # not Bob, a member
    assert sent.subject == "[Meterbill] Low balance in Alice Lab: 40.00 credits"
    assert (
        "the lab's balance is 40.00 credits, under the alert you set at 50.00 credits" in sent.body
    )
    assert f"/app/labs/{cast.lab.uuid}/billing/" in sent.body
    assert sweep() == 0 and len(alert_mails()) == 1  # still under: no second mail

    services.budget_reverse(lab=cast.lab, project=cast.alpha, amount="10")  # 50: not under
    assert sweep() == 0
    assert BalanceAlert.objects.get().notified_at is None  # armed again
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="0.000001")
    assert sweep() == 1 and len(alert_mails()) == 2
    assert alert_mails()[1].subject == "[Meterbill] Low balance in Alice Lab: 49.999999 credits"


@pytest.mark.django_db
def test_a_project_alert_watches_that_projects_budget_only(
    cast, django_capture_on_commit_callbacks
):
    services.lab_top_up(lab=cast.lab, amount="100")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="30")
    alert_add(lab=cast.lab, project=cast.alpha, threshold="20", actor=cast.alice)
    alert_add(lab=cast.lab, project=cast.beta, threshold="20", actor=cast.alice)  # beta: 0
    with django_capture_on_commit_callbacks(execute=True):
        assert balance_alerts_sweep() == 1  # beta's, already under
    assert "project Beta's budget is 0.00 credits" in alert_mails()[0].body
    services.budget_move(lab=cast.lab, debited=cast.alpha, credited=cast.beta, amount="15")
    with django_capture_on_commit_callbacks(execute=True):
        assert balance_alerts_sweep() == 1  # alpha's now (15); beta (15) stays sent
    assert "project Alpha's budget is 15.00 credits" in alert_mails()[1].body


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweeps_send_one_mail(cast):
    eager = app.conf.task_always_eager
    services.lab_top_up(lab=cast.lab, amount="10")
    alert_add(lab=cast.lab, project=None, threshold="50", actor=cast.alice)
    fired = []
    assert run_threads(6, lambda _: fired.append(balance_alerts_sweep())) == []
    assert eager and sum(fired) == 1 and len(alert_mails()) == 1


@pytest.mark.django_db
def test_alerts_are_unique_per_balance_and_threshold_and_limited_per_lab(cast):
    from billing.balance_alerts import BalanceAlertError

    alert_add(lab=cast.lab, project=None, threshold="50", actor=cast.alice)
    with pytest.raises(BalanceAlertError, match="already has an alert at that threshold"):
        alert_add(lab=cast.lab, project=None, threshold="50.000", actor=cast.alice)
    alert_add(lab=cast.lab, project=cast.alpha, threshold="50", actor=cast.alice)  # another balance
    for n in range(MAX_ALERTS_PER_LAB - 2):
        alert_add(lab=cast.lab, project=None, threshold=str(n + 1), actor=cast.alice)
    with pytest.raises(BalanceAlertError, match=f"at most {MAX_ALERTS_PER_LAB} alerts"):
        alert_add(lab=cast.lab, project=None, threshold="1000", actor=cast.alice)
    assert BalanceAlert.objects.filter(lab=cast.lab).count() == MAX_ALERTS_PER_LAB


@pytest.mark.django_db
def test_a_mail_that_could_not_be_queued_is_queued_again_and_sent_once(
    cast, django_capture_on_commit_callbacks, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    from billing import tasks

    services.lab_top_up(lab=cast.lab, amount="10")
    alert_add(lab=cast.lab, project=None, threshold="50", actor=cast.alice)
    alert_add(lab=cast.lab, project=None, threshold="40", actor=cast.alice)
    queued = tasks.balance_alert_mail.delay
    calls = []

    def broker_down_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise ConnectionError("broker unreachable")
        return queued(*args)

    monkeypatch.setattr(tasks.balance_alert_mail, "delay", broker_down_once)
    with django_capture_on_commit_callbacks(execute=True):
        assert balance_alerts_sweep() == 2
    assert len(calls) == 2 and len(alert_mails()) == 1  # the second was queued all the same
    with django_capture_on_commit_callbacks(execute=True):
        assert balance_alerts_sweep() == 0  # not yet: its task may still be on its way
    assert len(alert_mails()) == 1
    later = timezone.now() + timedelta(minutes=11)
    with django_capture_on_commit_callbacks(execute=True):
        assert balance_alerts_sweep(now=later) == 0
    assert len(alert_mails()) == 2
    assert not BalanceAlert.objects.filter(mailed_at__isnull=True).exists()
    with django_capture_on_commit_callbacks(execute=True):
        balance_alerts_sweep(now=later + timedelta(minutes=11))
    assert len(alert_mails()) == 2  # each fall mailed once


@pytest.mark.django_db
def test_the_mail_task_sends_once_skips_a_fall_that_is_over_and_retries_a_failed_send(
    cast, monkeypatch
):
    import smtplib

    from billing.balance_alerts import balance_alert_send

    services.lab_top_up(lab=cast.lab, amount="10")
    alert = alert_add(lab=cast.lab, project=None, threshold="50", actor=cast.alice)
    balance_alerts_sweep()  # the mail task is not run: called below by hand
    fallen_at = BalanceAlert.objects.get().notified_at.isoformat()

    def smtp_down(*args, **kwargs):
        raise smtplib.SMTPServerDisconnected("gone")

    monkeypatch.setattr("core.mail.send_mail", smtp_down)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        balance_alert_send(alert_id=alert.pk, fallen_at=fallen_at)
    assert BalanceAlert.objects.get().mailed_at is None  # claim given back for the retry
    monkeypatch.undo()
    assert balance_alert_send(alert_id=alert.pk, fallen_at=fallen_at) is True
    assert balance_alert_send(alert_id=alert.pk, fallen_at=fallen_at) is False  # redelivered
    assert len(alert_mails()) == 1

    services.lab_top_up(lab=cast.lab, amount="100")  # back: armed again by the next sweep
    balance_alerts_sweep()
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="70")  # 40: falls again
    balance_alerts_sweep()
    second = BalanceAlert.objects.get().notified_at.isoformat()
    assert balance_alert_send(alert_id=alert.pk, fallen_at=fallen_at) is False  # an older fall
    services.budget_reverse(lab=cast.lab, project=cast.alpha, amount="70")  # 110: over
    assert balance_alert_send(alert_id=alert.pk, fallen_at=second) is False  # stale news
    assert len(alert_mails()) == 1


@pytest.mark.django_db
def test_deactivated_admins_get_no_mail_and_another_labs_project_is_refused(
    cast, django_capture_on_commit_callbacks
):
    from billing.balance_alerts import BalanceAlertError, alert_recipients

    admin = user_create(email="dana@example.com", password="dana-pass-12345")
    membership_add(lab=cast.lab, user=admin, role=Role.ADMIN)
    admin.is_active = False
    admin.save()
    assert alert_recipients(cast.lab) == ["alice@example.com"]
    from accounts.services import project_create

    charlies = project_create(lab=cast.charlie_lab, name="Charlie's")
    with pytest.raises(BalanceAlertError, match="one of its own projects"):
        alert_add(lab=cast.lab, project=charlies, threshold="5", actor=cast.alice)
    assert not BalanceAlert.objects.exists()


# Pages ------------------------------------------------------------------------------------------


def _add(client, lab, **data):
    return client.post(f"/app/labs/{lab.uuid}/billing/alerts/", data)


@pytest.mark.django_db
def test_owners_add_and_remove_alerts_on_the_billing_page(client, cast):
    client.force_login(cast.alice)
    response = _add(client, cast.lab, target=str(cast.alpha.uuid), threshold="12.5")
    assert response.status_code == 302
    alert = BalanceAlert.objects.get()
    assert (alert.project, str(alert.threshold), alert.created_by) == (
        cast.alpha,
        "12.500000",
        cast.alice,
    )
    page = client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
    row = page.split(f'data-alert="{alert.uuid}"')[1].split("</tr>")[0]
    assert "Project Alpha" in row and ">12.5<" in row and "Armed" in row
    client.force_login(cast.bob)  # a member sees the alerts, without the forms
    page = client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
    assert f'data-alert="{alert.uuid}"' in page and 'data-testid="alert-form"' not in page
    client.force_login(cast.alice)
    removed = client.post(f"/app/labs/{cast.lab.uuid}/billing/alerts/{alert.uuid}/remove/")
    assert removed.status_code == 302 and not BalanceAlert.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"threshold": "abc"}, "Amount must be a number"),
        ({"threshold": "-5"}, "Amount must be greater than 0"),
        ({"threshold": "0.0000001"}, "at most 6 decimal places"),
        ({"threshold": ""}, "This field is required"),
        ({"threshold": "5", "target": "00000000-0000-0000-0000-000000000000"}, "Choose this lab"),
    ],
)
def test_bad_input_is_a_form_error_and_writes_nothing(client, cast, data, error):
    client.force_login(cast.alice)
    response = _add(client, cast.lab, **data)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert not BalanceAlert.objects.exists()


@pytest.mark.django_db
def test_a_duplicate_is_a_form_error(client, cast):
    client.force_login(cast.alice)
    assert _add(client, cast.lab, threshold="5").status_code == 302
    response = _add(client, cast.lab, threshold="5.0")
    assert response.status_code == 400
    assert "This balance already has an alert at that threshold." in response.content.decode()
    assert BalanceAlert.objects.count() == 1


@pytest.mark.django_db
def test_members_and_outsiders_cannot_set_or_remove_alerts(client, cast):
    alert = alert_add(lab=cast.lab, project=None, threshold="5", actor=cast.alice)
    remove = f"/app/labs/{cast.lab.uuid}/billing/alerts/{alert.uuid}/remove/"
    client.force_login(cast.bob)  # a member
    assert _add(client, cast.lab, threshold="7").status_code == 403
    assert client.post(remove).status_code == 403
    client.force_login(cast.charlie)  # an outsider
    assert _add(client, cast.lab, threshold="7").status_code == 404
    assert client.post(remove).status_code == 404
    assert (
        "Alice Lab"
        not in client.get(f"/app/labs/{cast.charlie_lab.uuid}/billing/").content.decode()
    )
    # Charlie's own lab cannot reach Alice's alert or project either.
    assert (
        client.post(
            f"/app/labs/{cast.charlie_lab.uuid}/billing/alerts/{alert.uuid}/remove/"
        ).status_code
        == 404
    )
    response = _add(client, cast.charlie_lab, threshold="7", target=str(cast.alpha.uuid))
    assert response.status_code == 400
    assert list(BalanceAlert.objects.values_list("threshold", flat=True)) == [Decimal("5")]
    client.force_login(cast.alice)
    assert client.get(f"/app/labs/{cast.lab.uuid}/billing/alerts/").status_code == 302  # a GET


def test_the_sweep_is_scheduled():
    tasks = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "billing.balance_alerts_sweep" in tasks
