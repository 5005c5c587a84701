"""The key's secret is shown once and stored nowhere; it is checked in constant time."""

from __future__ import annotations

import hmac

import pytest
from django.db import connection

from keys import authorize as authorize_module
from keys.services import key_rotate
from tests.keys.conftest import authorize

pytestmark = pytest.mark.django_db


def _every_text_value() -> str:
    """Every row of every table of ours, as text."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        tables = [row[0] for row in cursor.fetchall()]
        dump = []
        for table in tables:
            cursor.execute(f'SELECT t::text FROM "{table}" t')  # noqa: S608 - our own table names
            dump += [row[0] for row in cursor.fetchall()]
    return "\n".join(dump)


def test_the_secret_appears_nowhere_in_the_database(cast, gateway, make_key):
    key, full = make_key()
    _, rotated = key_rotate(key=key)
    assert authorize(gateway, full).status_code == 200
    assert authorize(gateway, rotated).status_code == 200
    dump = _every_text_value()
    assert key.lookup_id in dump  # the dump does contain the key's row
    for secret in (full.split("_", 2)[2], rotated.split("_", 2)[2]):
        assert secret not in dump
        assert full not in dump


def test_the_secret_is_compared_in_constant_time(gateway, make_key, monkeypatch):
    _, full = make_key()
    compared = []
    real_compare = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(authorize_module.hmac, "compare_digest", spy)
    assert authorize(gateway, full).status_code == 200
    assert authorize(gateway, full[:-1] + ("A" if full[-1] != "A" else "B")).status_code == 401
    assert len(compared) >= 2
    assert all(len(a) == len(b) == 64 for a, b in compared)  # HMACs, never the secrets
