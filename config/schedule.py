"""Every periodic task, in one place. Each period (seconds) is an environment setting."""

from __future__ import annotations

from typing import Any

import environ


def beat_schedule(env: environ.Env) -> dict[str, dict[str, Any]]:
    return {
        "worker-heartbeat": {
            "task": "core.worker_heartbeat",
            "schedule": env.int("WORKER_HEARTBEAT_PERIOD", default=60),
        },
    }
