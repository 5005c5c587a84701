"""A throwaway embedded PostgreSQL and Redis for in-process benchmarks, with Django set up
and migrated on them."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def embedded_django() -> Iterator[None]:
    from devstack.services import free_port, postgres_start, redis_start

    scratch = Path(tempfile.mkdtemp(prefix="meterbill-bench-"))
    postgres = postgres_start(scratch / "pg", database="bench", cleanup_mode="delete")
    redis = redis_start(scratch / "redis", port=free_port(), persist=False)
    try:
        os.environ.update(
            DATABASE_URL=postgres.url,
            REDIS_URL=redis.url,
            DJANGO_SETTINGS_MODULE="config.settings.test",
        )
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        yield
    finally:
        from django.db import connections

        connections.close_all()
        redis.stop()
        postgres.stop()
        shutil.rmtree(scratch, ignore_errors=True)
