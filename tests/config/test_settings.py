"""Production settings: refuse to start without secrets, and pass `check --deploy`."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings.production",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "API_KEY_PEPPER": secrets.token_urlsafe(24),
    "ALLOWED_HOSTS": "billing.example.com",
    "DATABASE_URL": "postgres://meterbill:pw@db.internal:5432/meterbill",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "EMAIL_URL": "smtp://mail.internal:25",
}


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_environment_set():
    result = _check(PRODUCTION_ENV)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_each_secret():
    for name in ["SECRET_KEY", "API_KEY_PEPPER", "ALLOWED_HOSTS", "DATABASE_URL", "EMAIL_URL"]:
        env = {k: v for k, v in PRODUCTION_ENV.items() if k != name}
        result = _check(env)
        assert result.returncode != 0, name
        assert f"Set the {name} environment variable" in result.stderr, name


def test_production_refuses_a_short_pepper():
    result = _check({**PRODUCTION_ENV, "API_KEY_PEPPER": "short"})
    assert result.returncode != 0
    assert "API_KEY_PEPPER must be at least 16 characters" in result.stderr


def test_production_refuses_a_stripe_key_without_its_webhook_secret():
    result = _check({**PRODUCTION_ENV, "STRIPE_SECRET_KEY": "sk_live_x"})
    assert result.returncode != 0
    assert "Set STRIPE_WEBHOOK_SECRET too" in result.stderr
    both = {"STRIPE_SECRET_KEY": "sk_live_x", "STRIPE_WEBHOOK_SECRET": "whsec_x"}
    assert _check({**PRODUCTION_ENV, **both}).returncode == 0


def test_production_starts_without_stripe_keys_and_never_in_test_mode():
    """No keys: payments are off (compose's and the benches' default), never the free
    test-mode checkout, whatever DJANGO_DEBUG or STRIPE_OFFLINE_TEST_MODE say."""
    env = {**PRODUCTION_ENV, "DJANGO_DEBUG": "true", "STRIPE_OFFLINE_TEST_MODE": "true"}
    assert _check(env).returncode == 0
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    script = (
        "import django; django.setup(); from billing import stripe_gateway; "
        "print(stripe_gateway.offline(), stripe_gateway.test_mode())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**base, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


def test_every_environment_variable_read_by_settings_is_documented():
    import re

    readme = (ROOT / "README.md").read_text()
    sources = "".join(p.read_text() for p in (ROOT / "config").rglob("*.py"))
    names = set(re.findall(r"env(?:\.\w+)?\(\s*\"([A-Z][A-Z0-9_]+)\"", sources))
    names |= set(re.findall(r"os\.environ\.setdefault\(\"([A-Z][A-Z0-9_]+)\"", sources))
    assert {"SECRET_KEY", "DATABASE_URL", "API_KEY_PEPPER"} <= names
    missing = sorted(name for name in names if f"`{name}`" not in readme)
    assert not missing


def test_migrations_match_the_models(db):
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
