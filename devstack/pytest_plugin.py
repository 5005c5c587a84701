"""Gives the test suite a real PostgreSQL and Redis unless DATABASE_URL / REDIS_URL are set.

Runs before pytest-django reads the settings (tryfirst on pytest_load_initial_conftests)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from devstack.services import free_port, postgres_start, redis_start

_started: list[Any] = []
_scratch: list[Path] = []


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: Any, args: Any) -> None:
    if not os.environ.get("DATABASE_URL"):
        data_dir = Path(tempfile.mkdtemp(prefix="meterbill-test-pg-")) / "pgdata"
        postgres = postgres_start(data_dir, database="meterbill", cleanup_mode="delete")
        _started.append(postgres)
        _scratch.append(data_dir.parent)
        os.environ["DATABASE_URL"] = postgres.url
    if not os.environ.get("REDIS_URL"):
        redis_dir = Path(tempfile.mkdtemp(prefix="meterbill-test-redis-"))
        server = redis_start(redis_dir, port=free_port(), persist=False)
        _started.append(server)
        _scratch.append(redis_dir)
        os.environ["REDIS_URL"] = server.url


def pytest_unconfigure(config: pytest.Config) -> None:
    while _started:
        _started.pop().stop()
    while _scratch:
        shutil.rmtree(_scratch.pop(), ignore_errors=True)
