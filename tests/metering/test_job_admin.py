"""Operators see open long-running jobs in the admin: heartbeat, charged, reservation left."""

import pytest

from accounts.services import user_create
from billing import services as billing
from metering import usage
from metering.models import ServiceType
from metering.reservations import reservation_create
from tests.metering.test_reservations import priced_service
from tests.metering.test_usage import SIM_TIERS


@pytest.mark.django_db
def test_the_admin_lists_running_jobs_with_what_they_still_hold(client, cast):
    from django.utils import timezone

    sim = priced_service("single-cell-sim", ServiceType.LONGRUN, SIM_TIERS)
    billing.budget_grant(project=cast.alpha, amount="100")
    running = reservation_create(project=cast.alpha, service=sim, quantity=600, params={})
    usage.longrun_event_record(
        job_uuid=running.uuid, project=cast.alpha, subtype="single-cell-sim",
        status="started", at=timezone.now(), instances=1,
    )  # fmt: skip
    waiting = reservation_create(project=cast.alpha, service=sim, quantity=60, params={})
    operator = user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)
    client.force_login(operator)
    page = client.get("/admin/metering/job/?state=open").content.decode()
    assert str(running.uuid) in page and "7.500000" in page  # 1.5 + 600 x 0.01 still held
    assert str(waiting.uuid) not in page
    assert client.get(f"/admin/metering/job/{running.pk}/change/").status_code == 200
    assert (
        client.post(f"/admin/metering/job/{running.pk}/delete/", {"post": "yes"}).status_code == 403
    )
