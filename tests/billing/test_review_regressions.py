"""Defects found in review, each pinned by a test that failed before its fix."""

import threading
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.db import connection, connections, transaction

from accounts.services import lab_create, project_create, user_create
from billing import services
from billing.audit import ledger_audit
from billing.models import EntryType, JournalEntry
from billing.selectors import lab_balance, project_balances

D = Decimal


def wait_until_blocked(label):
    """Poll PostgreSQL until a backend whose query mentions `label` waits on a lock."""
    with connections["default"].cursor() as cursor:
        for _ in range(2000):
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            if cursor.fetchone()[0]:
                return
            threading.Event().wait(0.005)
    raise AssertionError(f"{label} never waited on a lock")


@pytest.mark.django_db(transaction=True)
def test_void_during_an_uncommitted_assign_neither_deadlocks_nor_misses_money():
    lab = lab_create(name="L")
    project = project_create(lab=lab, name="P")
    grant = services.lab_top_up(lab=lab, amount="100")
    assigned, release = threading.Event(), threading.Event()
    results, errors = {}, []

    def assign():
        try:
            with transaction.atomic():
                services.budget_assign(lab=lab, project=project, amount="40")
                assigned.set()
                release.wait(30)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    def void():
        try:
            results["voided"] = services.grant_void(grant=grant, reason="fraud")
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=assign)
    first.start()
    assert assigned.wait(30)
    second = threading.Thread(target=void)
    second.start()
    wait_until_blocked("grant_void")
    release.set()
    first.join(30)
    second.join(30)
    assert errors == []
    assert results["voided"] == D("100")  # 60 in the lab and the 40 just assigned
    state = lab_balance(lab)
    assert state.balance == 0 and project_balances([project])[0].balance == 0
    assert ledger_audit() == []


@pytest.mark.django_db
def test_staff_who_may_only_view_grants_cannot_void_them(client, cast):
    grant = services.lab_top_up(lab=cast.lab, amount="40")
    viewer = user_create(email="viewer@example.com", password="viewer-pass-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_grant"))
    client.force_login(viewer)
    client.post(
        "/admin/billing/grant/",
        {"action": "void", "_selected_action": [grant.pk], "apply": "1", "reason": "x"},
    )
    assert JournalEntry.objects.filter(type=EntryType.VOID).count() == 0
    assert lab_balance(cast.lab).balance == D("40")


@pytest.mark.django_db
def test_the_same_amount_written_differently_replays_instead_of_conflicting(cast):
    first = services.lab_top_up(lab=cast.lab, amount=D("1"), idempotency_key="k")
    assert services.lab_top_up(lab=cast.lab, amount="1.0", idempotency_key="k") == first
    assert services.lab_top_up(lab=cast.lab, amount="1.000000", idempotency_key="k") == first


@pytest.mark.django_db
def test_a_scheduled_grant_is_not_reported_as_available(token_client, cast):
    from datetime import timedelta

    from django.utils import timezone

    services.lab_top_up(lab=cast.lab, amount="50", effective_at=timezone.now() + timedelta(days=1))
    gateway = token_client(["accounting"])
    body = gateway.get(f"/api/accounting/balance/virtual-lab/{cast.lab.uuid}").json()
    assert body["data"]["balance"] == "0.00"  # assigning any of it would be refused


@pytest.mark.django_db
def test_huge_or_deeply_nested_input_is_a_4xx_not_a_500(token_client, cast):
    gateway = token_client(["accounting"])
    lab = str(cast.lab.uuid)
    huge = gateway.post(
        "/api/accounting/budget/top-up",
        {"vlab_id": lab, "amount": "999999999999999999.999999"},
        format="json",
    )
    assert huge.status_code == 422
    deep = gateway.post(
        "/api/accounting/budget/top-up",
        data="[" * 100_000 + "]" * 100_000,
        content_type="application/json",
    )
    assert deep.status_code == 422
    assert JournalEntry.objects.count() == 0


@pytest.mark.django_db
def test_a_nul_byte_in_a_token_is_a_401(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Bearer st_abc\x00def_ghi")
    assert api_client.get("/api/v1/labs/").status_code == 401


@pytest.mark.django_db
def test_a_projects_lab_cannot_be_changed_in_the_admin(client, cast):
    operator = user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)
    client.force_login(operator)
    client.post(
        f"/admin/accounts/project/{cast.alpha.pk}/change/",
        {"name": "Alpha", "lab": cast.charlie_lab.pk},
    )
    cast.alpha.refresh_from_db()
    assert cast.alpha.lab == cast.lab


@pytest.mark.django_db
def test_an_impossibly_large_reservation_is_a_402_and_writes_nothing(token_client, cast):
    from metering.models import Job
    from tests.metering.test_reservations import priced_service

    priced_service()
    services.budget_grant(project=cast.alpha, amount="10")
    gateway = token_client(["accounting"])
    for count in [10**23, 10**40]:
        response = gateway.post(
            "/api/accounting/reservation/oneshot",
            {"type": "oneshot", "subtype": "ml-llm", "proj_id": str(cast.alpha.uuid),
             "user_id": str(uuid.uuid4()), "count": str(count)},
            format="json",
        )  # fmt: skip
        assert response.status_code == 402, count
        estimate = gateway.post(
            "/api/accounting/estimate/oneshot",
            {
                "type": "oneshot",
                "subtype": "ml-llm",
                "proj_id": str(cast.alpha.uuid),
                "count": count,
            },
            format="json",
        )
        assert estimate.status_code == 200
    assert Job.objects.count() == 0
