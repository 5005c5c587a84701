"""Hot-path SQL: statements the ORM would spend longer building than PostgreSQL running."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from django.db import connection


def execute_prepared(
    sql: str, params: Sequence[object] | dict[str, object]
) -> list[tuple[Any, ...]]:
    """Run a statement with server-side binding as a prepared statement: PostgreSQL plans it
    once per connection, and arrays travel in binary instead of as quoted literals. Errors
    become Django's."""
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchall() if cursor.description else []
