"""No Docker engine runs here, so the compose file is checked as data."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
services = compose["services"]
APP_SERVICES = ["web", "worker", "beat"]


def test_it_has_every_service():
    assert set(services) == {"postgres", "redis", "web", "worker", "beat", "mailpit"}


def test_python_services_share_one_image_built_from_the_dockerfile():
    assert {services[name]["image"] for name in APP_SERVICES} == {"meterbill:latest"}
    assert all(services[name]["build"] == "." for name in APP_SERVICES)
    assert (ROOT / "Dockerfile").exists()


def test_web_migrates_before_it_serves():
    command = " ".join(services["web"]["command"])
    assert command.index("migrate --noinput") < command.index("gunicorn config.wsgi")


def test_worker_and_beat_run_celery():
    assert services["worker"]["command"][:4] == ["celery", "-A", "config", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "config", "beat"]


def test_app_services_get_the_production_environment():
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert environment["DJANGO_SETTINGS_MODULE"] == "config.settings.production"
        assert environment["DATABASE_URL"].startswith("postgres://")
        assert "@postgres:5432/" in environment["DATABASE_URL"]
        assert environment["REDIS_URL"] == "redis://redis:6379/0"
        assert environment["EMAIL_URL"] == "smtp://mailpit:1025"
        # Secrets must come from outside: compose fails fast when they are missing.
        assert ":?" in environment["SECRET_KEY"] and ":?" in environment["API_KEY_PEPPER"]


def test_app_services_wait_for_healthy_dependencies():
    assert services["web"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    for name in ["worker", "beat"]:
        assert services[name]["depends_on"] == {"web": {"condition": "service_healthy"}}


def test_databases_have_health_checks_and_volumes():
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert set(compose["volumes"]) == {"pgdata", "redisdata"}


def test_every_variable_in_env_example_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    names = [
        line.lstrip("# ").split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("# Copy") and line.lstrip("# ")[:1].isupper()
    ]
    assert names
    missing = [name for name in names if f"`{name}`" not in readme]
    assert not missing
