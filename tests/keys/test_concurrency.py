"""Limits under concurrency: real threads and real server processes against the real
PostgreSQL and Redis. A budget or a rate limit that concurrent requests can overrun is no limit."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from django.db import connection, connections

from accounts.models import Scope
from accounts.services import service_token_create
from billing.selectors import project_balances
from devstack.services import free_port
from keys.authorize import authorize
from keys.models import ApiKey, KeyJob

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def _authorize_all(full_key: str, count: int, units: int) -> list[str]:
    token, _ = service_token_create(name="gateway", scopes=[Scope.AUTHORIZE])
    barrier = threading.Barrier(count)

    def one(_: int) -> str:
        try:
            barrier.wait()
            return authorize(token=token, raw_key=full_key, slug="ml-llm", units=units).code
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def test_fifty_concurrent_authorizes_against_a_cap_covering_twelve(cast, make_key):
    key, full = make_key(credit_limit="12")  # 100 units cost 1 credit
    codes = _authorize_all(full, 50, units=100)
    assert codes.count("allowed") == 12
    assert codes.count("key_credit_limit") == 38
    assert ApiKey.objects.get(pk=key.pk).credit_used == Decimal("12")
    assert KeyJob.objects.filter(key=key).count() == 12
    assert project_balances([cast.alpha])[0].reserved == Decimal("12")


def test_fifty_concurrent_authorizes_against_project_credits_covering_twelve(cast, make_key):
    _, full = make_key()
    codes = _authorize_all(full, 50, units=800)  # 8 credits each; Alpha has 100
    assert codes.count("allowed") == 12
    assert codes.count("insufficient_funds") == 38
    balance = project_balances([cast.alpha])[0]
    assert (balance.balance, balance.reserved) == (Decimal("4"), Decimal("96"))


def _test_database_url() -> str:
    """DATABASE_URL naming the test database that pytest-django made."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path=f"/{connection.settings_dict['NAME']}"))


def _server(port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _test_database_url(),
    }
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi:application",
        "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4",
        "--worker-class", "gthread", "--error-logfile", str(log), "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, env=env)


def _wait_up(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {url} did not start:\n{log.read_text(errors='replace')}")


@pytest.fixture
def two_servers(tmp_path):
    servers, urls = [], []
    try:
        for index in range(2):
            port, log = free_port(), tmp_path / f"server{index}.log"
            servers.append(_server(port, log))
            urls.append(f"http://127.0.0.1:{port}")
            _wait_up(urls[-1], servers[-1], log)
        yield urls
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)


def test_two_server_processes_share_one_rate_limit(cast, make_key, two_servers):
    _, full = make_key(limits={"ml-llm": {"requests_per_minute": 60}})
    _, token = service_token_create(name="gateway", scopes=[Scope.AUTHORIZE])
    headers = {"Authorization": f"Bearer {token}"}
    clients = [httpx.Client(base_url=url, headers=headers, timeout=30) for url in two_servers]

    def one(index: int) -> int:
        client = clients[index % 2]
        body = {"key": full, "service": "ml-llm", "units": 1}
        return client.post("/api/v1/authorize", json=body).status_code

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(one, range(70)))
        assert statuses.count(200) == 60
        assert statuses.count(429) == 10
        late = [
            client.post("/api/v1/authorize", json={"key": full, "service": "ml-llm"})
            for client in clients
        ]
        assert [response.status_code for response in late] == [429, 429]
        assert late[0].headers["X-RateLimit-Remaining"] == "0"
        assert int(late[0].headers["Retry-After"]) >= 1
    finally:
        for client in clients:
            client.close()
    assert project_balances([cast.alpha])[0].reserved == Decimal("0.60")


def test_authorizes_racing_releases_expiries_and_storage_events_never_deadlock(cast, make_key):
    """Each of these locks a job or its project and then the project's ledger accounts, while
    an authorize holds those accounts and inserts a job (a foreign-key check on the project)."""
    from datetime import timedelta

    from django.utils import timezone

    from keys.caps import key_job_for, key_job_usage_record
    from metering.models import Job, ServiceType
    from metering.reservations import reservation_release, reservations_expire
    from metering.usage import storage_event_record
    from tests.billing.test_concurrency import run_threads
    from tests.metering.test_reservations import priced_service

    _, full = make_key()
    storage = priced_service("storage", ServiceType.STORAGE)
    token, _ = service_token_create(name="gateway", scopes=[Scope.AUTHORIZE, Scope.USAGE])
    start = timezone.now()

    def work(index):
        if index == 0:
            for _ in range(30):
                reservations_expire(now=timezone.now() + timedelta(days=1))
        elif index == 1:
            for n in range(20):
                storage_event_record(
                    project=cast.alpha, service=storage, size=n + 1,
                    at=start + timedelta(seconds=n),
                )  # fmt: skip
        else:
            for n in range(8):
                decision = authorize(token=token, raw_key=full, slug="ml-llm", units=100)
                if decision.code != "allowed":
                    continue  # expired by the other thread before its usage: not the point
                job = Job.objects.get(uuid=decision.job_id)
                try:
                    if n % 2:
                        reservation_release(job=job)
                    else:
                        key_job_usage_record(
                            key_job=key_job_for(decision.job_id), units=50, token=token
                        )
                except Exception as exc:
                    if "deadlock" in str(exc):
                        raise
        connections.close_all()

    assert run_threads(6, work) == []


def test_two_releases_adjust_their_keys_in_id_order(cast, make_key, monkeypatch):
    """Run A's batch holds key 2's job then key 1's, run B's key 1's then key 2's (by when they
    were made). Each pauses after its first adjustment until the other gets there too: in
    batch order that is a deadlock; with the keys locked in id order first, B waits for A."""
    import threading

    from keys import caps
    from metering.models import Job
    from metering.reservations import reservation_release
    from tests.billing.test_concurrency import run_threads

    first, full_1 = make_key(name="one", credit_limit="100")
    second, full_2 = make_key(name="two", credit_limit="100")
    assert first.pk < second.pk
    token, _ = service_token_create(name="gateway", scopes=[Scope.AUTHORIZE])
    for full in (full_2, full_1, full_1, full_2):
        decision = authorize(token=token, raw_key=full, slug="ml-llm", units=100)
        reservation_release(job=Job.objects.get(uuid=decision.job_id))
    both_adjusted_once = threading.Barrier(2, timeout=3)
    adjust, adjusted = caps._cap_adjust, threading.local()

    def pausing(*args, **kwargs):
        adjust(*args, **kwargs)
        if not getattr(adjusted, "once", False):
            adjusted.once = True
            with contextlib.suppress(threading.BrokenBarrierError):
                both_adjusted_once.wait()

    monkeypatch.setattr(caps, "_cap_adjust", pausing)
    assert run_threads(2, lambda _: caps.key_jobs_release(batch=2)) == []
    assert not KeyJob.objects.filter(released_at__isnull=True).exists()
    assert set(ApiKey.objects.values_list("credit_used", flat=True)) == {Decimal(0)}
