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
        "usage-events-settle": {
            "task": "metering.usage_events_settle",
            "schedule": env.int("USAGE_SETTLE_PERIOD", default=60),
        },
        "longrun-jobs-charge": {
            "task": "metering.longrun_jobs_charge",
            "schedule": env.int("LONGRUN_CHARGE_PERIOD", default=60),
        },
        "storage-jobs-charge": {
            "task": "metering.storage_jobs_charge",
            "schedule": env.int("STORAGE_CHARGE_PERIOD", default=3600),
        },
        "reservations-expire": {
            "task": "metering.reservations_expire",
            "schedule": env.int("RESERVATIONS_EXPIRE_PERIOD", default=60),
        },
        "keys-expire": {
            "task": "keys.keys_expire",
            "schedule": env.int("KEYS_EXPIRE_PERIOD", default=60),
        },
        "key-holds-release": {
            "task": "keys.key_holds_release",
            "schedule": env.int("KEY_HOLDS_RELEASE_PERIOD", default=60),
        },
        "grants-expire": {
            "task": "billing.grants_expire",
            "schedule": env.int("GRANTS_EXPIRE_PERIOD", default=60),
        },
        "plan-periods-renew": {
            "task": "billing.plan_periods_renew",
            "schedule": env.int("PLAN_PERIODS_RENEW_PERIOD", default=60),
        },
        "usage-rollup": {
            "task": "metering.usage_rollup",
            "schedule": env.int("USAGE_ROLLUP_PERIOD", default=60),
        },
        "auto-recharge-sweep": {
            "task": "billing.auto_recharge_sweep",
            "schedule": env.int("AUTO_RECHARGE_SWEEP_PERIOD", default=60),
        },
        "balance-alerts-sweep": {
            "task": "billing.balance_alerts_sweep",
            "schedule": env.int("BALANCE_ALERTS_SWEEP_PERIOD", default=60),
        },
        "ledger-audit": {
            "task": "billing.ledger_audit",
            "schedule": env.int("LEDGER_AUDIT_PERIOD", default=86400),
        },
    }
