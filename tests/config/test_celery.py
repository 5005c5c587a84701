from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache

from config.celery import app
from core.tasks import HEARTBEAT_CACHE_KEY, worker_heartbeat
from tests.celery_worker import celery_worker

ROOT = Path(__file__).resolve().parents[2]


def test_celery_speaks_json_only_with_time_limits():
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.broker_url == settings.REDIS_URL
    assert conf.task_time_limit > conf.task_soft_time_limit > 0
    assert "core.worker_heartbeat" in {entry["task"] for entry in conf.beat_schedule.values()}


@pytest.fixture
def celery_worker_process():
    with celery_worker() as process:
        yield process


def test_a_real_worker_runs_a_task_end_to_end(celery_worker_process):
    assert not app.conf.task_always_eager
    result = worker_heartbeat.delay()
    stamped = result.get(timeout=60)
    assert cache.get(HEARTBEAT_CACHE_KEY) == stamped
    assert celery_worker_process.poll() is None
