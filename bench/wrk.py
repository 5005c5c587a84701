"""wrk (Debian's `wrk` package) as the load generator of the HTTP benchmarks: one run of a Lua
script against a URL, its figures read back as one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass

from bench.http_stack import HttpStack, http_stack

# Every script ends with this: wrk's figures as one JSON line. A script that keeps its threads
# in `threads` (from setup) and counts finished units of work in a thread variable `done_work`
# gets their sum as `work`.
_DONE = """
done = function(summary, latency, requests)
  local work = 0
  for _, thread in ipairs(threads or {}) do work = work + (thread:get("done_work") or 0) end
  io.write(string.format(
    "RESULT {\\"requests\\": %d, \\"seconds\\": %f, \\"status_errors\\": %d, " ..
    "\\"socket_errors\\": %d, \\"p50\\": %f, \\"p99\\": %f, \\"work\\": %d}\\n",
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000, work))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    status_errors: int
    socket_errors: int
    p50: float  # ms
    p99: float  # ms
    work: int = 0  # the script's own count (see _DONE)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def work_per_second(self) -> float:
        return self.work / self.seconds


def wrk(url: str, script: str, *, seconds: float, connections: int, threads: int) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script + _DONE)
    try:
        output = subprocess.run(  # noqa: S603
            [
                shutil.which("wrk") or "wrk", "-t", str(threads), "-c", str(connections),
                "-d", f"{int(seconds)}s", "--timeout", "10s", "-s", handle.name, url,
            ],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(handle.name)
    match = re.search(r"RESULT (\{.*\})", output)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    return WrkResult(**json.loads(match.group(1)))


def server_options(parser: argparse.ArgumentParser) -> None:
    """The gunicorn settings of a run: 3 sync workers by default, as the Dockerfile runs it."""
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers")
    parser.add_argument("--worker-class", default="sync")
    parser.add_argument("--gunicorn-threads", type=int, default=1)


def served(
    args: argparse.Namespace, extra_env: dict[str, str] | None = None
) -> AbstractContextManager[HttpStack]:
    """The stack of a run, after checking for wrk and printing the run's machine line."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} | {platform.node()} | {os.cpu_count()} cores |"
        f" Python {platform.python_version()} | load {os.getloadavg()[0]:.2f} |"
        f" gunicorn {args.workers} x {args.worker_class} ({args.gunicorn_threads} threads)"
    )
    return http_stack(
        workers=args.workers,
        worker_class=args.worker_class,
        threads=args.gunicorn_threads,
        extra_env=extra_env,
    )
