"""Batch usage ingestion over HTTP, against the production server on a throwaway stack
(bench/http_stack.py: embedded PostgreSQL and Redis, gunicorn on 127.0.0.1).

    make bench-ingest      (or: .venv/bin/python -m bench.http_ingest --seconds 20)

Measures, in one run and with the same concurrent clients:
  1. GET /health, requests/s: the server's floor (no database), the baseline;
  2. POST /api/v1/usage/events with an empty batch: token check and an empty transaction;
  3. POST /api/v1/usage/events with batches of --batch new events: events accepted per second;
  4. then one settlement run (in this process, as the worker would) over every accepted event:
     events settled per second, and whether a minute of ingestion settles within a minute.
Bounded by --seconds per measurement and --max-events; every event must be accepted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

import httpx

from bench.http_stack import HttpStack, Load, http_stack, load, token_create, world_create

PATH = "/api/v1/usage/events"
JSON = {"content-type": "application/json"}


def _bodies(projects: list[str], *, batches: int, size: int, prefix: str) -> list[bytes]:
    """Request bodies, encoded before the clock starts: `batches` batches of `size` new events
    over the projects, 1 to 5,000 units each, stamped within the last hour."""
    rng = random.Random(7)  # noqa: S311 - reproducible load, not secrets
    now = int(time.time())
    bodies = []
    for b in range(batches):
        events = [
            {
                "id": f"{prefix}{b}-{i}",
                "project": projects[(b + i) % len(projects)],
                "service": "ml-llm",
                "units": rng.randint(1, 5000),
                "timestamp": now - rng.randint(0, 3600),
                "key": f"k_{i % 50}",
            }
            for i in range(size)
        ]
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


def _health(client: httpx.Client, _n: int) -> int:
    client.get("/health").raise_for_status()
    return 1


def _empty(client: httpx.Client, _n: int) -> int:
    response = client.post(PATH, content=b'{"events": []}', headers=JSON)
    response.raise_for_status()
    return 1


def _poster(bodies: list[bytes]):
    def post(client: httpx.Client, n: int) -> int:
        response = client.post(PATH, content=bodies[n], headers=JSON)
        response.raise_for_status()
        answer = response.json()
        if answer["rejected"] or answer["duplicates"]:
            raise RuntimeError(f"{answer['rejected']} rejected, {answer['duplicates']} duplicates")
        return int(answer["accepted"])

    return post


def _row(name: str, measured: Load, unit: str, baseline: float) -> str:
    rate = measured.done_per_second
    return (
        f"| {name} | {measured.requests:,} | {measured.requests_per_second:,.0f} | "
        f"{rate:,.0f} {unit} | {measured.latency(0.5) * 1000:.0f} / "
        f"{measured.latency(0.95) * 1000:.0f} ms | {measured.requests_per_second / baseline:.2f} |"
    )


def run(stack: HttpStack, args: argparse.Namespace) -> None:
    from billing.audit import ledger_audit
    from metering.models import UsageEvent
    from metering.settlement import usage_events_settle

    world = world_create(projects=args.projects)
    token = token_create(scopes=["usage"])
    projects = [str(p.uuid) for p in world.projects]
    batches = max(args.max_events // args.batch, 1)
    bodies = _bodies(projects, batches=batches, size=args.batch, prefix="e")
    warm = _bodies(projects, batches=4 * args.clients, size=args.batch, prefix="w")
    common = {"clients": args.clients, "token": token}

    # Warm up every worker (imports, connections, prepared statements), then measure.
    load(stack, _health, seconds=1, **common)
    warmed = load(stack, _poster(warm), seconds=30, max_requests=len(warm), **common)
    health = load(stack, _health, seconds=args.baseline_seconds, **common)
    empty = load(stack, _empty, seconds=args.baseline_seconds, **common)
    ingest = load(stack, _poster(bodies), seconds=args.seconds, max_requests=batches, **common)
    failures = warmed.failures + health.failures + empty.failures + ingest.failures

    accepted = UsageEvent.objects.filter(outcome="accepted", settled_at__isnull=True).count()
    started = time.perf_counter()
    settled = usage_events_settle(batch_size=args.settle_batch)
    settle_seconds = time.perf_counter() - started
    problems = ledger_audit()

    settle_rate = settled.events / settle_seconds
    ingest_rate = ingest.done_per_second
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; server: {' '.join(stack.command[4:])}"
    )
    print(f"{args.clients} clients, batches of {args.batch} events, {args.projects} projects")
    print()
    print("| measurement | requests | requests/s | rate | p50 / p95 latency | vs. /health |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_row("GET /health (baseline)", health, "req/s", health.requests_per_second))
    print(_row("POST an empty batch", empty, "req/s", health.requests_per_second))
    print(_row(f"POST batches of {args.batch}", ingest, "events/s", health.requests_per_second))
    print()
    print(
        f"accepted: {ingest.done:,} events in {ingest.seconds:.1f} s "
        f"(+{warmed.done:,} in the warm-up); failures: {len(failures)} {failures[:3]}"
    )
    print(
        f"settlement: {settled.events:,} of {accepted:,} events in {settled.charges} charges, "
        f"{settle_seconds:.2f} s = {settle_rate:,.0f} events/s "
        f"({settle_rate / ingest_rate:.1f}x the ingestion rate: a minute of ingestion settles in "
        f"{60 * ingest_rate / settle_rate:.1f} s)"
    )
    print(f"ledger audit after the run: {problems or 'clean'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--batch", type=int, default=500, help="events per request")
    parser.add_argument("--seconds", type=float, default=20, help="ingestion measurement")
    parser.add_argument("--baseline-seconds", type=float, default=5)
    parser.add_argument("--max-events", type=int, default=300_000)
    parser.add_argument("--projects", type=int, default=8)
    parser.add_argument("--settle-batch", type=int, default=5000)
    # The Dockerfile's server: 3 sync workers. On 2 cores, 2-4 sync workers and 2 gthread
    # workers of 4 threads measured the same within the machine's noise (docs/benchmarks.md).
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--worker-class", default="sync", choices=["sync", "gthread"])
    parser.add_argument("--threads", type=int, default=1, help="threads per gthread worker")
    args = parser.parse_args()
    with http_stack(
        workers=args.workers, worker_class=args.worker_class, threads=args.threads
    ) as stack:
        run(stack, args)


if __name__ == "__main__":
    main()
