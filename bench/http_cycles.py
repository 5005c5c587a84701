"""Oneshot reserve-then-usage cycles over HTTP, measured by wrk against the production server
(gunicorn, 3 sync workers as the Dockerfile runs it) with an embedded PostgreSQL, with the SDK's
wire bodies.

    make bench-cycles    (or: .venv/bin/python -m bench.http_cycles --seconds 20)

In one run, with the same wrk settings: GET /health (no database, no auth) and GET
/api/accounting/balance/project/{id} (a token and one read) as baselines, then cycles of
POST /reservation/oneshot + POST /usage/oneshot for the job the reservation returned. Each wrk
connection has a thread of its own (so its requests strictly alternate) and a project of its
own; a cycle counts when both answer 201. Needs `wrk` on PATH (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import uuid

from bench.http_stack import HttpStack, token_create, world_create
from bench.wrk import WrkResult, served, server_options, wrk

_COMMON = """
local projects = {%(projects)s}
local token = "%(token)s"
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  project = projects[(id %% #projects) + 1]
  done_work = 0
end
"""

_BALANCE = """
request = function()
  return wrk.format("GET", "/api/accounting/balance/project/" .. project, headers)
end
"""

# One connection per thread: response() sees the answer to the request() just sent.
_CYCLE = """
local job = nil

request = function()
  if job then
    return wrk.format("POST", "/api/accounting/usage/oneshot", headers, string.format(
      '{"type":"oneshot","subtype":"ml-llm","proj_id":"%%s","name":null,"count":"1200",' ..
      '"job_id":"%%s","timestamp":"%%d"}', project, job, os.time()))
  end
  return wrk.format("POST", "/api/accounting/reservation/oneshot", headers, string.format(
    '{"type":"oneshot","subtype":"ml-llm","proj_id":"%%s","user_id":"%(user)s",' ..
    '"name":null,"count":"1000"}', project))
end

response = function(status, headers, body)
  if job then
    if status == 201 then done_work = done_work + 1 end
    job = nil
  elseif status == 201 then
    job = string.match(body, '"job_id":%%s*"([%%x%%-]+)"')
  end
end
"""


def _row(name: str, rate: float, per_request: int, baseline: float, result: WrkResult) -> str:
    return (
        f"| {name} | {rate:,.0f} | {rate * per_request / baseline:.2f} |"
        f" {result.p50:.1f} | {result.p99:.1f} | {result.status_errors + result.socket_errors} |"
    )


def run(stack: HttpStack, *, seconds: float, connections: int) -> None:
    from billing.audit import ledger_audit
    from metering.models import Job

    token = token_create(scopes=["accounting"])
    world = world_create(projects=connections, credits="100000000")
    common = _COMMON % {
        "projects": ", ".join(f'"{project.uuid}"' for project in world.projects),
        "token": token,
    }
    cycle = common + _CYCLE % {"user": uuid.uuid4()}
    balance = common + _BALANCE

    def measure(url: str, script: str, duration: float) -> WrkResult:
        return wrk(url, script, seconds=duration, connections=connections, threads=connections)

    measure(f"{stack.url}/health", "", 3)  # warm up every worker
    measure(stack.url, cycle, 3)
    bare = measure(f"{stack.url}/health", "", seconds)
    read = measure(stack.url, balance, seconds)
    before = Job.objects.filter(closed_at__isnull=False).count()
    cycles = measure(stack.url, cycle, seconds)
    settled = Job.objects.filter(closed_at__isnull=False).count() - before
    base = bare.per_second
    print("| measurement | per second | requests/s vs /health | p50 ms | p99 ms | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_row("GET /health (requests)", base, 1, base, bare))
    print(_row("GET balance/project (requests)", read.per_second, 1, base, read))
    print(
        _row("reserve + usage (cycles; 2 requests each)", cycles.work_per_second, 2, base, cycles)
    )
    print(f"jobs settled by the cycle run: {settled} (wrk counted {cycles.work} cycles)")
    print(f"ledger audit after the run: {ledger_audit() or 'clean'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (threads)")
    server_options(parser)
    args = parser.parse_args()
    with served(args) as stack:
        run(stack, seconds=args.seconds, connections=args.connections)


if __name__ == "__main__":
    main()
