"""A throwaway HTTP stack for benchmarks: embedded PostgreSQL and Redis (as `make run` starts
them), migrated, and the production server (gunicorn on `config.wsgi` with production settings)
on a free loopback port. This process gets Django too, on the same database and settings, to
create data before a run and to look at it (or run a worker's job) after.

    from bench.http_stack import http_stack, load, token_create, world_create

    with http_stack() as stack:  # 3 sync workers, as the Dockerfile runs it
        token = token_create(scopes=["usage"])
        world = world_create(projects=4)
        with stack.client(token) as client:
            client.get("/health")

One stack per process: Django's settings are read once. Everything is stopped and deleted when
the `with` block ends, however it ends.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only


@dataclass
class HttpStack:
    url: str  # http://127.0.0.1:<port>
    env: dict[str, str]  # what the server runs with (also set in this process)
    log: Path  # the server's error log
    command: list[str]

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        """An HTTP client of the server (keep-alive), with a service token if given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


def _server_env(database_url: str, redis_url: str) -> dict[str, str]:
    """Production settings, with throwaway secrets and plain HTTP on loopback."""
    return {
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "API_KEY_PEPPER": secrets.token_urlsafe(24),
        "ALLOWED_HOSTS": f"{HOST},localhost",
        "EMAIL_URL": "consolemail://",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": "WARNING",
        # No collectstatic here: WhiteNoise's warning about the missing STATIC_ROOT is noise.
        "PYTHONWARNINGS": "ignore:No directory at",
    }


def _wait_until_up(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"gunicorn did not answer on {url}:\n{tail}")


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    server.terminate()  # gunicorn: graceful shutdown of its workers
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


@contextmanager
def http_stack(
    *,
    workers: int = 3,
    worker_class: str = "sync",
    threads: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Iterator[HttpStack]:
    """Start PostgreSQL, Redis and gunicorn (`workers` processes of `worker_class`, `threads`
    threads each for gthread); yield the stack; stop and delete everything afterwards."""
    from devstack.services import free_port, postgres_start, redis_start

    scratch = Path(tempfile.mkdtemp(prefix="meterbill-bench-http-"))
    started: list[Any] = []
    server: subprocess.Popen[bytes] | None = None
    try:
        postgres = postgres_start(scratch / "pg", database="bench", cleanup_mode="delete")
        started.append(postgres)
        redis = redis_start(scratch / "redis", port=free_port(), persist=False)
        started.append(redis)
        env = {**_server_env(postgres.url, redis.url), **(extra_env or {})}
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        port = free_port()
        log = scratch / "gunicorn.log"
        command = [
            sys.executable, "-m", "gunicorn", "config.wsgi:application",
            "--bind", f"{HOST}:{port}",
            "--workers", str(workers),
            "--worker-class", worker_class,
            "--threads", str(threads),
            "--keep-alive", "30",
            "--log-level", "warning",
            "--error-logfile", str(log),
        ]  # fmt: skip
        server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})  # noqa: S603
        url = f"http://{HOST}:{port}"
        _wait_until_up(url, server, log, timeout=60)
        yield HttpStack(url=url, env=env, log=log, command=command)
    finally:
        if server is not None:
            _stop(server)
        if "django" in sys.modules and started:
            from django.db import connections

            connections.close_all()
        for service in reversed(started):
            service.stop()
        shutil.rmtree(scratch, ignore_errors=True)


# Data -------------------------------------------------------------------------------------------


def token_create(*, scopes: Sequence[str], lab: Any = None, name: str = "bench") -> str:
    """A service token (global, or bound to `lab`); returns the plain token."""
    from accounts.services import service_token_create

    _token, plain = service_token_create(name=name, scopes=list(scopes), lab=lab)
    return plain


@dataclass
class World:
    lab: Any  # accounts.models.Lab
    projects: list[Any]  # accounts.models.Project, each funded
    services: dict[tuple[str, str], Any] = field(default_factory=dict)  # (slug, type) → Service


def default_prices() -> dict[tuple[str, str], list[Any]]:
    from metering.cost import Tier

    return {
        ("ml-llm", "oneshot"): [
            Tier(0, 1000, Decimal("0.5"), Decimal("0.0000013")),
            Tier(1000, None, Decimal("2"), Decimal("0.00000007")),
        ],
        ("single-cell-sim", "longrun"): [Tier(0, None, Decimal("1.5"), Decimal("0.01"))],
    }


def world_create(
    *,
    name: str = "bench",
    projects: int = 4,
    credits: str = "1000000",
    prices: dict[tuple[str, str], list[Any]] | None = None,
    valid_from: datetime | None = None,
) -> World:
    """A lab with `projects` projects, each granted `credits`, and the services of `prices`
    ((slug, type) → tiers) priced for every lab from `valid_from` (default: 60 days ago)."""
    from django.utils import timezone

    from accounts.services import lab_create, project_create
    from billing import services as billing
    from metering.models import Service
    from metering.services import price_create

    lab = lab_create(name=name)
    world = World(
        lab=lab, projects=[project_create(lab=lab, name=f"{name}-{i}") for i in range(projects)]
    )
    for project in world.projects:
        billing.budget_grant(project=project, amount=credits)
    since = valid_from or timezone.now() - timedelta(days=60)
    for (slug, kind), tiers in (prices or default_prices()).items():
        service, _ = Service.objects.get_or_create(
            slug=slug, type=kind, defaults={"name": slug, "unit_label": "unit"}
        )
        price_create(service=service, tiers=tiers, valid_from=since)
        world.services[(slug, kind)] = service
    return world


# Load -------------------------------------------------------------------------------------------


@dataclass
class Load:
    """What `load` measured: requests sent, work done (as the request function counted it),
    failures, wall-clock seconds and per-request latencies."""

    requests: int = 0
    done: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def done_per_second(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def latency(self, quantile: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(int(quantile * len(ordered)), len(ordered) - 1)] if ordered else 0.0


def load(
    stack: HttpStack,
    request: Callable[[httpx.Client, int], int],
    *,
    clients: int = 4,
    seconds: float = 10.0,
    max_requests: int | None = None,
    token: str | None = None,
) -> Load:
    """`clients` threads, each with its own keep-alive client, call `request(client, n)` with
    n = 0, 1, 2, ... (shared, so every n is used once) until `seconds` pass or `max_requests`
    were sent. `request` returns how much work the answer says was done (events accepted, 1 for
    a good answer) and raises on a bad one; failures are collected, not fatal."""
    result = Load()
    lock = threading.Lock()
    counter = iter(range(max_requests if max_requests is not None else sys.maxsize))
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def work() -> None:
        with stack.client(token) as client:
            barrier.wait()
            while time.perf_counter() < deadline[0]:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                started = time.perf_counter()
                try:
                    done = request(client, n)
                    failure = None
                except Exception as exc:  # counted and reported, not fatal
                    done, failure = 0, f"{type(exc).__name__}: {exc}"[:300]
                took = time.perf_counter() - started
                with lock:
                    result.requests += 1
                    result.done += done
                    result.latencies.append(took)
                    if failure:
                        result.failures.append(failure)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    deadline[0] = started + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result
