"""Oneshot reserve-then-usage cycles over HTTP, against the production server (gunicorn) and
an embedded PostgreSQL, with the SDK's wire bodies.

    make bench-cycles    (or: .venv/bin/python -m bench.http_cycles --seconds 20)

In one run, with the same clients: GET /health (no database, no auth) and GET
/api/accounting/balance/project/{id} (a token and one read) as baselines, then cycles of
POST /reservation/oneshot + POST /usage/oneshot. A cycle counts when both answer 201.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import uuid

import httpx

from bench.http_stack import HttpStack, Load, http_stack, load, token_create, world_create


def _report(name: str, result: Load, per_request: int, baseline: float) -> str:
    rate = result.done_per_second
    return (
        f"| {name} | {rate:,.0f} | {rate * per_request / baseline:.2f} |"
        f" {result.latency(0.5) * 1000:.1f} | {result.latency(0.99) * 1000:.1f} |"
        f" {len(result.failures)} |"
    )


def run(stack: HttpStack, *, clients: int, seconds: float) -> None:
    token = token_create(scopes=["accounting"])
    world = world_create(projects=8, credits="100000000")
    projects = [str(p.uuid) for p in world.projects]
    user = str(uuid.uuid4())

    def health(client: httpx.Client, n: int) -> int:
        client.get("/health").raise_for_status()
        return 1

    def balance(client: httpx.Client, n: int) -> int:
        project = projects[n % len(projects)]
        client.get(f"/api/accounting/balance/project/{project}").raise_for_status()
        return 1

    def cycle(client: httpx.Client, n: int) -> int:
        project = projects[n % len(projects)]
        reserved = client.post(
            "/api/accounting/reservation/oneshot",
            json={"type": "oneshot", "subtype": "ml-llm", "proj_id": project, "user_id": user,
                  "name": None, "count": "1000"},
        )  # fmt: skip
        reserved.raise_for_status()
        job_id = reserved.json()["data"]["job_id"]
        used = client.post(
            "/api/accounting/usage/oneshot",
            json={"type": "oneshot", "subtype": "ml-llm", "proj_id": project, "name": None,
                  "count": "1200", "job_id": job_id, "timestamp": str(int(time.time()))},
        )  # fmt: skip
        used.raise_for_status()
        return 1

    load(stack, health, clients=clients, seconds=2, token=token)  # warm up every worker
    load(stack, cycle, clients=clients, seconds=2, token=token)
    bare = load(stack, health, clients=clients, seconds=seconds, token=token)
    read = load(stack, balance, clients=clients, seconds=seconds, token=token)
    cycles = load(stack, cycle, clients=clients, seconds=seconds, token=token)
    base = bare.done_per_second
    print("| measurement | per second | requests/s vs /health | p50 ms | p99 ms | failures |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_report("GET /health (requests)", bare, 1, base))
    print(_report("GET balance/project (requests)", read, 1, base))
    print(_report("reserve + usage (cycles; 2 requests each)", cycles, 2, base))
    for failure in (bare.failures + read.failures + cycles.failures)[:5]:
        print(f"failure: {failure}")
    from billing.audit import ledger_audit

    print(f"ledger audit after the run: {ledger_audit() or 'clean'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    args = parser.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(
        f"machine: {machine}; gunicorn {args.workers} x gthread({args.threads}),"
        f" {args.clients} clients"
    )
    with http_stack(workers=args.workers, worker_class="gthread", threads=args.threads) as stack:
        run(stack, clients=args.clients, seconds=args.seconds)


if __name__ == "__main__":
    main()
