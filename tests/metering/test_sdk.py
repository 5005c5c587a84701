"""The accounting-service's real client (obp-accounting-sdk 0.6.x from PyPI) against a live
server of ours: only its base URL changes, and it gets a token through http_client_class."""

import functools
import uuid
from decimal import Decimal

import httpx
import pytest
from obp_accounting_sdk import AccountingSessionFactory
from obp_accounting_sdk._sync import longrun
from obp_accounting_sdk.errors import InsufficientFundsError

from accounts.services import service_token_create
from billing import services as billing
from billing.selectors import project_balances
from metering.cost import Tier, usage_cost
from metering.models import Job
from tests.metering.test_reservations import priced_service

D = Decimal
USER = uuid.uuid4()


@pytest.fixture
def factory(live_server, cast):
    priced_service()  # ml-llm: 0.00001 per token
    priced_service("single-cell-sim", "longrun", [Tier(0, None, D("1.5"), D("0.01"))])
    billing.budget_grant(project=cast.alpha, amount="100")
    _token, secret = service_token_create(name="sdk", scopes=["accounting"])
    client_class = functools.partial(
        httpx.Client, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )
    sdk = AccountingSessionFactory(
        http_client_class=client_class, base_url=f"{live_server.url}/api/accounting"
    )
    yield sdk
    sdk.close()


def balance(project):
    state = project_balances([project])[0]
    return state.balance, state.reserved


@pytest.mark.django_db(transaction=True)
def test_the_sdk_estimates_reserves_and_reports_oneshot_usage(factory, cast):
    assert factory.estimate_oneshot_cost(
        subtype="ml-llm", count=500_000, proj_id=cast.alpha.uuid
    ) == D("5.00")
    with factory.oneshot_session(
        subtype="ml-llm", proj_id=cast.alpha.uuid, user_id=USER, count=1_000_000, name="chat"
    ) as session:
        assert balance(cast.alpha) == (D("90"), D("10"))  # the estimate is held
        session.count = 1_500_000  # it used more than it reserved
    job = Job.objects.get(uuid=session.job_id)
    assert (job.charged_amount, job.name, job.user_uuid) == (D("15"), "chat", USER)
    assert balance(cast.alpha) == (D("85"), 0)


@pytest.mark.django_db(transaction=True)
def test_the_sdk_cancels_the_reservation_when_the_work_fails(factory, cast):
    with (
        pytest.raises(RuntimeError, match="model crashed"),
        factory.oneshot_session(
            subtype="ml-llm", proj_id=cast.alpha.uuid, user_id=USER, count=1_000_000
        ) as session,
    ):
        raise RuntimeError("model crashed")
    assert Job.objects.get(uuid=session.job_id).cancelled_at is not None
    assert balance(cast.alpha) == (D("100"), 0)


@pytest.mark.django_db(transaction=True)
def test_the_sdk_gets_insufficient_funds(factory, cast):
    with (
        pytest.raises(InsufficientFundsError),
        factory.oneshot_session(
            subtype="ml-llm", proj_id=cast.alpha.uuid, user_id=USER, count=50_000_000
        ),
    ):
        pass  # pragma: no cover - the reservation is refused before the body runs
    assert not Job.objects.exists() and balance(cast.alpha) == (D("100"), 0)


@pytest.mark.django_db(transaction=True)
def test_the_sdk_runs_a_longrun_session_with_heartbeats(factory, cast):
    session = factory.longrun_session(
        subtype="single-cell-sim",
        proj_id=cast.alpha.uuid,
        user_id=USER,
        instances=2,
        instance_type="FARGATE",
        duration=600,
    )
    with session:
        assert balance(cast.alpha) == (D("86.5"), D("13.5"))  # 2 x 600 s x 0.01 + 1.5
        session.start()
        # What the session's heartbeat process sends every ACCOUNTING_HEARTBEAT_INTERVAL:
        longrun.send_heartbeat(
            factory._base_url, factory._http_client, session._job_info, session.job_id
        )
        job = Job.objects.get(uuid=session.job_id)
        assert job.started_at is not None and job.last_alive_at >= job.started_at
    job.refresh_from_db()
    assert job.closed_at is not None and job.finished_at >= job.started_at
    seconds = int((job.finished_at - job.started_at).total_seconds())
    tiers = [Tier(0, None, D("1.5"), D("0.01"))]
    assert job.charged_amount == usage_cost(tiers, 0, 2 * seconds, D(0))
    assert balance(cast.alpha) == (D("100") - job.charged_amount, 0)
