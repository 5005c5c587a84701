"""Authorize decisions over HTTP, measured by wrk against the production server (gunicorn) with
an embedded PostgreSQL and Redis.

    make bench-authorize    (or: .venv/bin/python -m bench.http_authorize --seconds 15)

In one run, with the same wrk settings: GET /health (no database, no token) as the baseline,
then POST /api/v1/authorize with 32 keys of 8 funded projects, each key with a per-service
request and unit limit and a monthly credit cap, so every decision runs every check (Redis
window, cap, project credits) and opens a reservation. Then authorize again at about 200
requests/s (24 connections, each pausing after every answer) for its latency percentiles.
Needs `wrk` on PATH (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse

from bench.http_stack import HttpStack, token_create, world_create
from bench.wrk import WrkResult, served, server_options, wrk

_SCRIPT = """
local keys = {%(keys)s}
local token = "%(token)s"
local index = 0
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  index = id * 7
end

request = function()
  index = index + 1
  local body = '{"key":"' .. keys[(index %% #keys) + 1] .. '","service":"ml-llm","units":1000}'
  return wrk.format("POST", "/api/v1/authorize",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
end
%(delay)s
"""

PACED_RATE = 200
PACED_CONNECTIONS = 26
PACED_LATENCY_MS = 15  # what an answer takes at that rate (runs of 2026-12-01: p50 12-16 ms)


def keys_create(world, count_per_project: int) -> list[str]:
    from keys.services import key_create, key_settings_validate

    keys = []
    for project in world.projects:
        for n in range(count_per_project):
            _, full = key_create(
                project=project,
                name=f"bench {n}",
                key_settings=key_settings_validate(
                    services=["ml-llm"],
                    limits={
                        "ml-llm": {"requests_per_minute": 1_000_000, "units_per_minute": 10**12}
                    },
                    credit_limit="1000000000",
                    credit_limit_period="monthly",
                ),
            )
            keys.append(full)
    return keys


def plan_quotas_create(world) -> None:
    """Put the world's lab on a plan with request quotas (too high to refuse), so that every
    decision counts them too."""
    from billing.models import Plan
    from billing.plans import plan_subscribe
    from keys.models import PlanQuota

    plan = Plan.objects.create(slug="bench", name="Bench", credits=1, period="monthly")
    service = world.services[("ml-llm", "oneshot")]
    PlanQuota.objects.create(plan=plan, service=None, requests=10**9)
    PlanQuota.objects.create(plan=plan, service=service, requests=10**9)
    plan_subscribe(lab=world.lab, plan=plan, project=world.projects[0])


def _row(name: str, result: WrkResult, baseline: float) -> str:
    return (
        f"| {name} | {result.per_second:,.0f} | {result.per_second / baseline:.2f} |"
        f" {result.p50:.1f} | {result.p99:.1f} | {result.status_errors + result.socket_errors} |"
    )


def run(stack: HttpStack, *, seconds: float, connections: int, threads: int, quotas: bool) -> None:
    from billing.audit import ledger_audit
    from keys.models import KeyJob

    token = token_create(scopes=["authorize"])
    world = world_create(projects=8, credits="100000000")
    keys = keys_create(world, 4)
    if quotas:
        plan_quotas_create(world)
    quoted = ", ".join(f'"{key}"' for key in keys)
    flat_out = _SCRIPT % {"keys": quoted, "token": token, "delay": ""}
    # Each of PACED_CONNECTIONS waits this long after every answer: about PACED_RATE requests/s
    # in all when answers take PACED_LATENCY_MS (the table shows the rate reached).
    pause_ms = int(1000 * PACED_CONNECTIONS / PACED_RATE) - PACED_LATENCY_MS
    paced = _SCRIPT % {
        "keys": quoted,
        "token": token,
        "delay": f"function delay() return {pause_ms} end",
    }
    wrk(f"{stack.url}/health", "", seconds=3, connections=connections, threads=threads)
    wrk(stack.url, flat_out, seconds=3, connections=connections, threads=threads)  # warm up
    health = wrk(
        f"{stack.url}/health", "", seconds=seconds, connections=connections, threads=threads
    )
    before = KeyJob.objects.count()
    decisions = wrk(stack.url, flat_out, seconds=seconds, connections=connections, threads=threads)
    opened = KeyJob.objects.count() - before
    steady = wrk(stack.url, paced, seconds=seconds, connections=PACED_CONNECTIONS, threads=2)
    base = health.per_second
    print("| measurement | requests/s | vs /health | p50 ms | p99 ms | non-200 |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_row("GET /health", health, base))
    print(_row("POST /api/v1/authorize, flat out", decisions, base))
    print(_row(f"POST /api/v1/authorize, paced (~{PACED_RATE}/s)", steady, base))
    print(f"reservations opened by the flat-out run: {opened} (wrk counted {decisions.requests})")
    print(f"ledger audit after the run: {ledger_audit() or 'clean'}")
    print(f"plan request quotas counted: {'yes (2 per decision)' if quotas else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--plan-quotas", action="store_true", help="put the lab on a plan with request quotas"
    )
    server_options(parser)
    args = parser.parse_args()
    with served(args) as stack:
        run(
            stack,
            seconds=args.seconds,
            connections=args.connections,
            threads=args.threads,
            quotas=args.plan_quotas,
        )


if __name__ == "__main__":
    main()
