"""A real Celery worker process for the tests that need one (not eager mode)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def celery_worker(**env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A worker on the suite's Redis broker, with these environment variables on top."""
    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker",
        "--pool", "solo", "--without-gossip", "--without-mingle", "-l", "WARNING",
    ]  # fmt: skip
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", **env}
    process = subprocess.Popen(command, cwd=ROOT, env=environment)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)
