"""Ledger operations per second, in process, against a throwaway embedded PostgreSQL.

    make bench            (or: .venv/bin/python -m bench.ledger_ops --ops 2000)

Measures, in one run: a bare transaction (BEGIN; SELECT 1; COMMIT) as the baseline, a one-row
durable write as a transaction (BEGIN; UPDATE; COMMIT) and alone in autocommit (one round trip,
the floor for any durable write here), then assign/reverse pairs on one lab sequentially, then
the same from 8 threads on that one lab.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=2000, help="operations per measurement")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    from bench.embedded import embedded_django

    with embedded_django():
        run(args.ops, args.threads)


def run(ops: int, threads: int) -> None:
    from django.db import connection, transaction

    from accounts.services import lab_create, project_create
    from billing import services
    from billing.audit import ledger_audit

    lab = lab_create(name="bench")
    projects = [project_create(lab=lab, name=f"p{i}") for i in range(threads)]
    for _ in range(5):  # a few grants, so burn order has something to sort
        services.lab_top_up(lab=lab, amount="1000000")

    def bare() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_write_floor (id int PRIMARY KEY, n bigint)")
        cursor.execute("INSERT INTO bench_write_floor VALUES (1, 0)")

    def write_floor() -> None:
        """The cheapest durable write: one row updated, then COMMIT waits for the WAL flush."""
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("UPDATE bench_write_floor SET n = n + 1 WHERE id = 1")

    def write_floor_autocommit() -> None:
        """The same write in one round trip: autocommit, the server commits it at once."""
        with connection.cursor() as cursor:
            cursor.execute("UPDATE bench_write_floor SET n = n + 1 WHERE id = 1")

    def pair(project: object) -> None:
        services.budget_assign(lab=lab, project=project, amount="1.25")
        services.budget_reverse(lab=lab, project=project, amount="1.25")

    for _ in range(50):  # warm up connections, caches and prepared statements
        bare()
        write_floor()
        write_floor_autocommit()
        pair(projects[0])

    started = time.perf_counter()
    for _ in range(ops):
        bare()
    bare_rate = _rate(ops, time.perf_counter() - started)

    started = time.perf_counter()
    for _ in range(ops):
        write_floor()
    write_rate = _rate(ops, time.perf_counter() - started)

    started = time.perf_counter()
    for _ in range(ops):
        write_floor_autocommit()
    autocommit_write_rate = _rate(ops, time.perf_counter() - started)

    started = time.perf_counter()
    for _ in range(ops // 2):
        pair(projects[0])
    sequential_rate = _rate(ops // 2 * 2, time.perf_counter() - started)

    per_thread = ops // threads // 2
    barrier = threading.Barrier(threads)

    def worker(index: int) -> None:
        barrier.wait()
        for _ in range(per_thread):
            pair(projects[index])
        connection.close()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    concurrent_rate = _rate(per_thread * 2 * threads, time.perf_counter() - started)
    problems = ledger_audit()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print("| measurement | operations/s | vs. bare transaction |")
    print("|---|---:|---:|")
    print(f"| bare transaction (BEGIN; SELECT 1; COMMIT) | {bare_rate:,.0f} | 1.00 |")
    print(
        f"| one-row write transaction (UPDATE; COMMIT) | {write_rate:,.0f} | "
        f"{write_rate / bare_rate:.2f} |"
    )
    print(
        f"| one-row write, one round trip (autocommit UPDATE) | {autocommit_write_rate:,.0f} | "
        f"{autocommit_write_rate / bare_rate:.2f} |"
    )
    print(
        f"| assign/reverse, sequential | {sequential_rate:,.0f} | "
        f"{sequential_rate / bare_rate:.2f} |"
    )
    print(
        f"| assign/reverse, {threads} threads on one lab | {concurrent_rate:,.0f} | "
        f"{concurrent_rate / bare_rate:.2f} |"
    )
    print(f"ledger audit after the run: {problems or 'clean'}")


if __name__ == "__main__":
    main()
