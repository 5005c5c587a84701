"""What the smallest requests with authorize's round trips cost on this machine, next to
/health and authorize in the same run: the floor under authorize's throughput.

    make bench-floor    (or: .venv/bin/python -m bench.http_floor --seconds 10 --rounds 2)

The server is the production one (gunicorn, 3 sync workers, production settings) with the
endpoints of bench/floor_urls.py added: a service token checked, with a one-row INSERT
committed, a Redis script call, or both. Each round measures /health, the four, and authorize as
`make bench-authorize` drives it, one after the other with the same wrk settings. Needs `wrk`.
"""

from __future__ import annotations

import argparse

from bench.http_authorize import _SCRIPT, keys_create
from bench.http_stack import HttpStack, token_create, world_create
from bench.wrk import WrkResult, served, server_options, wrk

_FLOOR_SCRIPT = """
local token = "%(token)s"
request = function()
  return wrk.format("POST", "%(path)s",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token},
    '{"key":"sk_bench_floor","service":"ml-llm","units":1000}')
end
"""

FLOORS = ("/floor/token", "/floor/token-insert", "/floor/token-redis", "/floor/token-redis-insert")


def run(stack: HttpStack, *, seconds: float, rounds: int, connections: int, threads: int) -> None:
    from django.db import connection

    from bench.floor_urls import SCRATCH_TABLE_SQL

    with connection.cursor() as cursor:
        cursor.execute(SCRATCH_TABLE_SQL)
    token = token_create(scopes=["authorize"])
    keys = keys_create(world_create(projects=8, credits="100000000"), 4)
    scripts = {path: _FLOOR_SCRIPT % {"token": token, "path": path} for path in FLOORS}
    quoted = ", ".join(f'"{key}"' for key in keys)
    scripts["POST /api/v1/authorize"] = _SCRIPT % {"keys": quoted, "token": token, "delay": ""}

    def measure(url: str, script: str, duration: float) -> WrkResult:
        result = wrk(url, script, seconds=duration, connections=connections, threads=threads)
        if result.status_errors or result.socket_errors:
            raise SystemExit(f"{url}: {result.status_errors + result.socket_errors} failures")
        return result

    for script in scripts.values():  # warm up every worker's statements and scripts
        measure(stack.url, script, 2)
    names = ["GET /health", *scripts]
    print("| requests/s (÷ /health) | " + " | ".join(f"`{name}`" for name in names) + " |")
    print("|---|" + "---:|" * len(names))
    for number in range(1, rounds + 1):
        health = measure(f"{stack.url}/health", "", seconds)
        cells = [f"{health.per_second:,.0f}"]
        for script in scripts.values():
            result = measure(stack.url, script, seconds)
            cells.append(f"{result.per_second:,.0f} ({result.per_second / health.per_second:.2f})")
        print(f"| round {number} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    server_options(parser)
    args = parser.parse_args()
    with served(args, extra_env={"DJANGO_SETTINGS_MODULE": "bench.floor_settings"}) as stack:
        run(
            stack,
            seconds=args.seconds,
            rounds=args.rounds,
            connections=args.connections,
            threads=args.threads,
        )


if __name__ == "__main__":
    main()
