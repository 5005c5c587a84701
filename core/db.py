"""Hot-path SQL: statements the ORM would spend longer building than PostgreSQL running."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connection

Params = Sequence[object] | dict[str, object]


@contextmanager
def statements_prepared() -> Iterator[psycopg.Connection[Any]]:
    """The raw connection, with psycopg's prepared statements on for `prepare=True` only.
    Django sets prepare_threshold to None, which makes psycopg ignore prepare=True as well."""
    connection.ensure_connection()
    raw = connection.connection
    threshold = raw.prepare_threshold
    raw.prepare_threshold = sys.maxsize
    try:
        yield raw
    finally:
        raw.prepare_threshold = threshold


def execute_prepared(sql: str, params: Params) -> list[tuple[Any, ...]]:
    """Run a statement with server-side binding as a prepared statement: PostgreSQL plans it
    once per connection, and arrays travel as parameters instead of quoted literals. Errors
    become Django's."""
    with (
        connection.wrap_database_errors,
        statements_prepared() as raw,
        psycopg.Cursor(raw) as cursor,
    ):
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchall() if cursor.description else []
