"""The workers' tasks: on the beat schedule, and run end to end by a real Celery worker on the
test database."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from billing import services as billing
from config.celery import app
from metering import tasks
from metering.models import Job, ServiceType
from metering.reservations import reservation_create
from tests.metering.test_reservations import priced_service
from tests.metering.test_usage import SIM_TIERS

ROOT = Path(__file__).resolve().parents[2]


def test_every_periodic_job_is_on_the_schedule():
    app.loader.import_default_modules()  # what a worker does when it starts
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert scheduled >= {
        "metering.longrun_jobs_charge", "metering.storage_jobs_charge",
        "metering.usage_events_settle", "metering.reservations_expire", "metering.usage_rollup",
        "billing.grants_expire", "billing.ledger_audit", "billing.plan_periods_renew",
    }  # fmt: skip
    assert scheduled <= set(app.tasks)


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_charges_a_running_job(cast, worker_on_the_test_database):
    sim = priced_service("single-cell-sim", ServiceType.LONGRUN, SIM_TIERS)
    billing.budget_grant(project=cast.alpha, amount="100")
    job = reservation_create(project=cast.alpha, service=sim, quantity=0, params={})
    started = timezone.now() - timedelta(seconds=300)
    Job.objects.filter(pk=job.pk).update(
        started_at=started, last_alive_at=timezone.now(), usage_params={"instances": 1}
    )
    assert not app.conf.task_always_eager
    assert tasks.longrun_jobs_charge.delay().get(timeout=60) == 1
    job.refresh_from_db()
    seconds = int((job.last_charged_at - started).total_seconds())
    assert seconds >= 300 and job.charged_amount == Decimal("1.5") + seconds * Decimal("0.01")
