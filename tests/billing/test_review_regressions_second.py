"""Regressions found in the second review (billing): each test failed before its fix."""

from decimal import Decimal

import pytest
from django.utils import timezone

from billing import charges
from billing import services as billing
from billing.audit import ledger_audit
from billing.selectors import lab_balance, project_balances
from metering import usage
from metering.reservations import reservation_create
from tests.metering.test_reservations import priced_service

D = Decimal


def balance(project):
    return project_balances([project])[0].balance


def _in_debt_then_covered(cast):
    """alpha overdraws by 10 (on grant A), then an assignment of 15 covers it: balance 5."""
    llm = priced_service()  # 0.00001 per token
    billing.budget_grant(project=cast.alpha, amount="10")
    job = reservation_create(project=cast.alpha, service=llm, quantity=1000, params={})
    usage.oneshot_usage_record(
        job_uuid=job.uuid, project=cast.alpha, subtype="ml-llm", count=2_000_000,
        at=timezone.now(),
    )  # fmt: skip
    assert balance(cast.alpha) == D("-10")
    billing.lab_top_up(lab=cast.lab, amount="15")
    billing.budget_assign(lab=cast.lab, project=cast.alpha, amount="15")
    assert balance(cast.alpha) == D("5")


@pytest.mark.django_db
def test_project_deplete_of_a_covered_debt_takes_only_the_balance(cast):
    _in_debt_then_covered(cast)
    taken = billing.project_deplete(project=cast.alpha)
    assert ledger_audit() == []
    # found: 15 taken, the project back at -10 (in debt again, 402 on every reservation)
    assert (taken, balance(cast.alpha)) == (D("5"), D("0"))


@pytest.mark.django_db
def test_lab_deplete_of_a_covered_debt_takes_only_the_balance(cast):
    _in_debt_then_covered(cast)
    taken = billing.lab_deplete(lab=cast.lab)
    assert ledger_audit() == []
    assert (taken, balance(cast.alpha)) == (D("5"), D("0"))
    assert lab_balance(cast.lab).balance == 0


@pytest.mark.django_db
def test_a_batch_refuses_two_orders_for_one_job(cast):
    llm = priced_service()
    billing.budget_grant(project=cast.alpha, amount="400")
    job = reservation_create(project=cast.alpha, service=llm, quantity=10**6, params={})  # 10
    orders = [
        charges.ChargeOrder(cast.alpha.pk, cast.lab.pk, D("1"), job.uuid, release_rest=True),
        charges.ChargeOrder(cast.alpha.pk, cast.lab.pk, D("2"), job.uuid, release_rest=True),
    ]
    # Found: the 7 left would be released twice (reservation account at -7).
    with pytest.raises(ValueError, match="one order per job"):
        charges.usage_charges_post(orders=orders)
    assert balance(cast.alpha) == D("390")
