"""The periodic ledger work: the grant expiry sweep and the daily audit."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail
from django.db import connection
from django.utils import timezone

from billing import services
from billing.models import EntryType, JournalEntry
from billing.selectors import lab_balance
from billing.sweeps import grants_expire, ledger_audit_report

D = Decimal


@pytest.mark.django_db
def test_the_sweep_expires_due_grants_once_and_leaves_the_others(cast):
    soon = timezone.now() + timedelta(days=1)
    due = services.lab_top_up(lab=cast.lab, amount="30", expires_at=soon)
    later = services.lab_top_up(lab=cast.lab, amount="20", expires_at=soon + timedelta(days=9))
    services.lab_top_up(lab=cast.lab, amount="5")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="10")  # from `due` first
    job = uuid.uuid4()
    services.hold_create(project=cast.alpha, amount="4", job_uuid=job)  # held: stays held
    assert grants_expire() == 0
    with time_machine.travel(soon + timedelta(seconds=1)):
        assert grants_expire() == 1
        assert grants_expire() == 0
        due.refresh_from_db()
        later.refresh_from_db()
        assert due.expired_at is not None and later.expired_at is None
        state = lab_balance(cast.lab)
        assert state.balance == D("25")  # 20 + 5 left; Alpha's 6 unheld went back too
        alpha = state.projects[0]
        assert (alpha.project, alpha.balance, alpha.reserved) == (cast.alpha, 0, D("4"))
        # Released later, the held part of the expired grant goes to the system account.
        assert services.hold_release(project=cast.alpha, job_uuid=job) == D("4")
        alpha = lab_balance(cast.lab).projects[0]
        assert (alpha.balance, alpha.reserved) == (0, 0)
    assert JournalEntry.objects.filter(type=EntryType.EXPIRE).count() == 1


@pytest.mark.django_db
def test_a_clean_audit_sends_no_mail(cast, settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    services.lab_top_up(lab=cast.lab, amount="10")
    assert ledger_audit_report() == []
    assert mail.outbox == []


@pytest.mark.django_db
@pytest.mark.ledger_broken_on_purpose
def test_a_broken_invariant_is_mailed_to_the_operators(cast, settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    services.lab_top_up(lab=cast.lab, amount="10")
    with connection.cursor() as cursor:  # a cached balance that no longer matches its lines
        cursor.execute("UPDATE billing_ledgeraccount SET balance = balance + 1 WHERE type='vlab'")
    problems = ledger_audit_report()
    assert problems and mail.outbox[0].to == ["ops@example.com"]
    assert "broken invariant" in mail.outbox[0].subject
    assert problems[0] in mail.outbox[0].body
