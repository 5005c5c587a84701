"""Hot-path SQL: statements the ORM would spend longer building than PostgreSQL running."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Model
from psycopg import pq

Params = Sequence[object] | dict[str, object]


@contextmanager
def statements_prepared() -> Iterator[psycopg.Connection[Any]]:
    """The raw connection, with psycopg's prepared statements on for `prepare=True` only.
    Django sets prepare_threshold to None, which makes psycopg ignore prepare=True as well."""
    connection = connections[DEFAULT_DB_ALIAS]
    connection.ensure_connection()
    raw = connection.connection
    threshold = raw.prepare_threshold
    raw.prepare_threshold = sys.maxsize
    try:
        yield raw
    finally:
        raw.prepare_threshold = threshold


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def sql_bound(sql: str, arguments: dict[str, str]) -> str:
    """A psycopg statement with its %(name)s placeholders replaced by SQL expressions (a
    PL/pgSQL function's arguments, literals): to reuse a hot-path statement inside a function.
    A placeholder without one is an error."""
    return _PLACEHOLDER.sub(lambda match: arguments[match.group(1)], sql.strip())


@contextmanager
def savepoint_if_nested() -> Iterator[None]:
    """Nothing outside a transaction (a statement commits by itself); inside one, a savepoint,
    so that a failing statement undoes itself only, not the caller's transaction."""
    if connections[DEFAULT_DB_ALIAS].in_atomic_block:
        with transaction.atomic():
            yield
    else:
        yield


def _has_rows(cursor: psycopg.Cursor[Any]) -> bool:
    """Whether the statement returned a result set; cheaper than `cursor.description`, which
    builds an object per column."""
    result = cursor.pgresult
    return result is not None and result.status == pq.ExecStatus.TUPLES_OK


def execute_prepared(sql: str, params: Params) -> list[tuple[Any, ...]]:
    """Run a statement with server-side binding as a prepared statement: PostgreSQL plans it
    once per connection, and arrays travel as parameters instead of quoted literals. Errors
    become Django's."""
    with (
        connections[DEFAULT_DB_ALIAS].wrap_database_errors,
        statements_prepared() as raw,
        psycopg.Cursor(raw) as cursor,
    ):
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchall() if _has_rows(cursor) else []


def execute_pipelined(*statements: tuple[str, Params]) -> list[list[tuple[Any, ...]]]:
    """Run hot-path statements, prepared, in one round trip (a pipeline). Each still reads with
    its own snapshot. In autocommit mode the Sync that ends the pipeline commits them as one
    transaction, and an error in any rolls them all back; inside a transaction they join it."""
    errors = connections[DEFAULT_DB_ALIAS].wrap_database_errors
    with errors, statements_prepared() as raw, ExitStack() as stack:
        cursors = [stack.enter_context(psycopg.Cursor(raw)) for _ in statements]
        with raw.pipeline():
            for cursor, (sql, params) in zip(cursors, statements, strict=True):
                cursor.execute(sql, params, prepare=True)
        return [cursor.fetchall() if _has_rows(cursor) else [] for cursor in cursors]


class Columns:
    """A model's concrete columns in a hand-written SELECT, and its instances from the rows,
    as the ORM would load them (`from_db`): for prepared statements on hot paths.

        JOB = Columns(Job, "j")
        rows = execute_prepared(f"SELECT {JOB.sql} FROM metering_job j WHERE ...", params)
        job = JOB.load(rows[0])
    """

    def __init__(self, model: type[Model], alias: str) -> None:
        self.model = model
        self.alias = alias
        self.attnames = [field.attname for field in model._meta.concrete_fields]
        # What the ORM's compiler converts after reading (JSON arrives as text).
        self.converted = [
            (index, field)
            for index, field in enumerate(model._meta.concrete_fields)
            if hasattr(field, "from_db_value")
        ]
        self.sql = ", ".join(f'{alias}."{field.column}"' for field in model._meta.concrete_fields)

    def __len__(self) -> int:
        return len(self.attnames)

    def load(self, row: Sequence[Any], start: int = 0) -> Any:
        values = list(row[start : start + len(self.attnames)])
        connection = connections[DEFAULT_DB_ALIAS]
        for index, field in self.converted:
            values[index] = field.from_db_value(values[index], None, connection)
        return self.model.from_db(DEFAULT_DB_ALIAS, self.attnames, values)
