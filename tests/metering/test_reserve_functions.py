"""The reservation's PostgreSQL functions (metering.reserve_sql): installed by migrate, replaced
whatever their old signature, and a reservation they committed is never turned into an error."""

from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from billing import recharge_trigger
from billing import services as billing
from billing.audit import ledger_audit
from billing.selectors import project_balances
from metering import reserve_sql, usage
from metering.errors import MissingPriceError
from metering.models import Job
from metering.reservations import reservation_create
from tests.metering.test_reservations import priced_service

D = Decimal


def _versions(name: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT oid::regprocedure::text FROM pg_proc WHERE proname = %s ORDER BY 1", [name]
        )
        return [signature for (signature,) in cursor.fetchall()]


@pytest.mark.django_db
def test_migrate_installed_one_version_of_each_function():
    assert len(_versions(reserve_sql.HOLD)) == 1
    assert len(_versions(reserve_sql.CREATE)) == 1
    assert len(_versions("keys_authorize_hold")) == 1


@pytest.mark.django_db
def test_install_replaces_a_function_whose_signature_changed(cast):
    with connection.cursor() as cursor:  # what an older release could have left behind
        cursor.execute(
            f"CREATE FUNCTION {reserve_sql.CREATE}(p_job_row jsonb) RETURNS bigint"
            " LANGUAGE sql AS 'SELECT 0::bigint'"
        )
    assert len(_versions(reserve_sql.CREATE)) == 2
    reserve_sql.install()
    assert len(_versions(reserve_sql.CREATE)) == 1
    llm = priced_service()
    billing.budget_grant(project=cast.alpha, amount="10")
    job = reservation_create(project=cast.alpha, service=llm, quantity=100_000, params={})
    assert Job.objects.get(pk=job.pk).reserved_amount == D("1")


@pytest.mark.django_db(transaction=True)
def test_a_failing_recharge_trigger_does_not_fail_a_committed_reservation(cast, monkeypatch):
    llm = priced_service()
    billing.budget_grant(project=cast.alpha, amount="10")

    def unreadable():
        raise RuntimeError("the auto-recharge targets could not be read")

    monkeypatch.setattr(recharge_trigger, "_targets_now", unreadable)
    job = reservation_create(project=cast.alpha, service=llm, quantity=100_000, params={})
    assert Job.objects.filter(uuid=job.uuid).exists()
    assert project_balances([cast.alpha])[0].reserved == D("1")
    assert ledger_audit() == []


@pytest.mark.django_db
def test_usage_of_a_job_without_a_price_is_refused_not_charged_nothing(cast):
    llm = priced_service()
    billing.budget_grant(project=cast.alpha, amount="10")
    job = reservation_create(project=cast.alpha, service=llm, quantity=100_000, params={})
    Job.objects.filter(pk=job.pk).update(price=None)
    with pytest.raises(MissingPriceError):
        usage.oneshot_usage_record(
            job_uuid=job.uuid, project=cast.alpha, subtype="ml-llm", count=5, at=timezone.now()
        )
    assert Job.objects.get(pk=job.pk).closed_at is None


@pytest.mark.django_db
def test_an_install_that_changes_nothing_leaves_the_functions_alone():
    def oids() -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT oid FROM pg_proc WHERE proname = ANY(%s) ORDER BY proname",
                [[reserve_sql.HOLD, reserve_sql.CREATE, "keys_authorize_hold"]],
            )
            return [oid for (oid,) in cursor.fetchall()]

    before = oids()
    reserve_sql.install()
    assert oids() == before and len(before) == 3
