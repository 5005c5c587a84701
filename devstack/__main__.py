"""`python -m devstack run | manage ARGS... | env`: the whole portal on one machine.

run     start PostgreSQL and Redis, migrate, load demo data, then serve the web app with a
        Celery worker and beat until Ctrl-C; data stays in .devstack/ for the next run.
manage  run one management command against the same data (the stack may be running or not).
env     print the environment variables that point at the embedded servers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.services import Postgres, Redis, postgres_start, redis_start

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".devstack"
PYTHON = sys.executable
WEB_ADDRESS = os.environ.get("DEVSTACK_WEB_ADDRESS", "127.0.0.1:8000")
REDIS_PORT = int(os.environ.get("DEVSTACK_REDIS_PORT", "6390"))


def _dotenv() -> dict[str, str]:
    """Values from .env (if any) for settings such as Stripe keys; the real environment wins."""
    path = ROOT / ".env"
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip("'\"")
    return values


def _start_stack() -> tuple[Postgres, Redis, dict[str, str]]:
    postgres = postgres_start(STATE / "pg", database="meterbill")
    redis = redis_start(STATE / "redis", port=REDIS_PORT, persist=True)
    return postgres, redis, stack_env(postgres.url, redis.url)


def stack_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The portal's environment on the embedded servers; .env and the real environment fill
    in the rest (the real environment wins)."""
    env = {**_dotenv(), **os.environ}
    env.update(
        DJANGO_SETTINGS_MODULE=env.get("DJANGO_SETTINGS_MODULE", "config.settings.local"),
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        PYTHONUNBUFFERED="1",
    )
    # Links in mails (receipts) point at this server unless the environment says otherwise.
    env.setdefault("PORTAL_BASE_URL", f"http://{WEB_ADDRESS}")
    return env


def _manage(env: dict[str, str], *args: str) -> int:
    return subprocess.call([PYTHON, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run() -> int:
    # Ctrl-C (also when started in the background, where SIGINT starts ignored) and SIGTERM.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    postgres, redis, env = _start_stack()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for command in (
            ["migrate", "--noinput"],
            ["seed_demo"],
            ["seed_demo_credits"],
            ["seed_demo_services"],
        ):
            if _manage(env, *command):
                return 1
        print(
            f"\nMeterbill is starting at http://{WEB_ADDRESS}/  (admin: /admin/, API docs:"
            " /api/docs/)\nGet a service token in another terminal with:\n"
            '  make manage ARGS="create_service_token demo --scopes'
            ' accounting,usage,authorize,keys,labs"\nCtrl-C stops everything.\n',
            flush=True,
        )
        commands = [
            [PYTHON, "manage.py", "runserver", WEB_ADDRESS],
            [PYTHON, "-m", "celery", "-A", "config", "worker", "-l", "INFO", "-c", "2"],
            [PYTHON, "-m", "celery", "-A", "config", "beat", "-l", "INFO",
             "--schedule", str(STATE / "celerybeat-schedule")],
        ]  # fmt: skip
        # Own sessions, so Ctrl-C reaches only this supervisor, which stops them in order.
        processes = [
            subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
            for command in commands
        ]
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        print("A process of the stack exited; stopping the rest.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping…", flush=True)
        return 0
    finally:
        _stop(processes)
        redis.stop()
        postgres.stop()


def manage(args: list[str]) -> int:
    postgres, redis, env = _start_stack()
    try:
        return _manage(env, *args)
    finally:
        redis.stop()  # only stops a Redis this command started itself
        postgres.stop()  # pgserver keeps it running while `make run` still uses it


def print_env() -> int:
    _postgres, redis, env = _start_stack()
    for key in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL"):
        print(f"export {key}='{env[key]}'")
    if redis.process is not None:
        print("# note: Redis was not running; start `make run` to keep it up.", file=sys.stderr)
        redis.stop()
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "manage", "env"}:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "run":
        return run()
    if argv[0] == "manage":
        return manage(argv[1:])
    return print_env()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
