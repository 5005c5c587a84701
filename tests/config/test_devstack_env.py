"""`make run`'s environment: mail links follow the address the server listens on."""

import devstack.__main__ as devstack


def test_mail_links_point_at_the_devstack_server(monkeypatch):
    monkeypatch.delenv("PORTAL_BASE_URL", raising=False)
    monkeypatch.setattr(devstack, "WEB_ADDRESS", "127.0.0.1:8055")
    env = devstack.stack_env("postgres://db", "redis://cache")
    assert env["PORTAL_BASE_URL"] == "http://127.0.0.1:8055"
    assert (env["DATABASE_URL"], env["REDIS_URL"]) == ("postgres://db", "redis://cache")


def test_an_explicit_portal_address_wins(monkeypatch):
    monkeypatch.setenv("PORTAL_BASE_URL", "https://billing.example.org")
    assert devstack.stack_env("postgres://db", "redis://cache")["PORTAL_BASE_URL"] == (
        "https://billing.example.org"
    )
