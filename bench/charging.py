"""One charging cycle of the long-running charger over many running jobs, in process,
against a throwaway embedded PostgreSQL.

    make bench-charging    (or: .venv/bin/python -m bench.charging --jobs 10000 100000)

For each size N (ascending), jobs are added until N are running (one instance each, started
at T0 with a 60-second hold), then one cycle at T0 + 300 s * k charges every one of them.
Reports seconds per cycle, jobs per second, and how the time grows with N.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

T0 = datetime(2026, 11, 1, tzinfo=UTC)
PROJECTS = 100  # over 10 labs
CHUNK = 5000


def _world():
    from accounts.services import lab_create, project_create
    from billing import services as billing
    from metering import services
    from metering.cost import Tier
    from metering.models import Service, ServiceType

    sim = Service.objects.create(
        slug="single-cell-sim", type=ServiceType.LONGRUN, name="sim", unit_label="second"
    )
    price = services.price_create(
        service=sim, tiers=[Tier(0, None, Decimal("1.5"), Decimal("0.01"))], valid_from=T0
    )
    labs = [lab_create(name=f"lab {i}") for i in range(PROJECTS // 10)]
    projects = [project_create(lab=labs[i % len(labs)], name=f"p{i}") for i in range(PROJECTS)]
    grants = {p.pk: billing.budget_grant(project=p, amount="100000000").pk for p in projects}
    return sim, price, projects, grants


def _add_running_jobs(count: int, world) -> None:
    """Bulk: the jobs, and each one's 2.1-credit hold as a reserve entry (what reserving them
    one by one would write, without 100,000 requests)."""
    from django.db import transaction

    from billing import charges
    from billing.ledger import Leg
    from billing.models import EntryType, LedgerAccount
    from metering.models import Job, ServiceType

    sim, price, projects, grants = world
    hold = Decimal("2.1")
    accounts = {
        (a.type, a.project_id): a.pk for a in LedgerAccount.objects.filter(project__in=projects)
    }
    for start in range(0, count, CHUNK):
        size = min(CHUNK, count - start)
        with transaction.atomic():
            jobs = Job.objects.bulk_create(
                Job(
                    lab_id=projects[i % PROJECTS].lab_id,
                    project=projects[i % PROJECTS],
                    service=sim,
                    kind=ServiceType.LONGRUN,
                    price=price,
                    reservation_params={"instances": 1, "duration": 60},
                    usage_params={"instances": 1},
                    reserved_amount=hold,
                    reserved_at=T0,
                    started_at=T0,
                    last_alive_at=T0,
                )
                for i in range(start, start + size)
            )
            charges.charge_accounts_lock(sorted({j.project_id for j in jobs}))
            entries = [
                charges._Entry(
                    EntryType.RESERVE,
                    [
                        Leg(accounts[("proj", job.project_id)], grants[job.project_id], -hold),
                        Leg(accounts[("rsv", job.project_id)], grants[job.project_id], hold),
                    ],
                    "",
                    None,
                    job.uuid,
                )
                for job in jobs
            ]
            charges._entries_post(entries, actor=None, at=T0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    from bench.embedded import embedded_django

    with embedded_django():
        run(sorted(args.jobs), args.batch_size)


def run(sizes: list[int], batch_size: int) -> None:
    from django.db import connection

    from billing.audit import ledger_audit
    from metering.charging import longrun_jobs_charge
    from metering.models import Job

    world = _world()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print("| running jobs | cycle seconds | jobs charged/s | seconds per 1,000 jobs |")
    print("|---:|---:|---:|---:|")
    running = 0
    for cycle, size in enumerate(sizes, start=1):
        _add_running_jobs(size - running, world)
        running = size
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")  # as autovacuum would have, after a bulk load
        moment = T0 + timedelta(seconds=300 * cycle)
        Job.objects.update(last_alive_at=moment - timedelta(seconds=30))  # heartbeats: alive
        started = time.perf_counter()
        result = longrun_jobs_charge(now=moment, batch_size=batch_size)
        seconds = time.perf_counter() - started
        if result.jobs_charged != size:
            raise SystemExit(f"expected {size} jobs charged: {result}")
        print(f"| {size:,} | {seconds:.1f} | {size / seconds:,.0f} | {seconds / size * 1000:.2f} |")
    problems = ledger_audit()
    print(f"ledger audit after the runs: {problems or 'clean'}")


if __name__ == "__main__":
    main()
