"""A reservation's writes as PostgreSQL functions: the job's row and its hold in one prepared
call that commits by itself, instead of an INSERT, a savepoint, the ledger's lock and transfer
and a COMMIT, each a round trip. The accounting routes and authorize (keys.hold_function) call
them on every reservation.

The functions are generated from the statements the Python paths run — the job's INSERT from
the model, the hold from billing.holds (the ledger's own lock and transfer) — and installed
again after every `migrate`, so none of them is written twice."""

from __future__ import annotations

import hashlib
import json
import uuid as uuid_lib
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from accounts.models import Project, ServiceToken, User
from billing import recharge_trigger
from billing.errors import InsufficientFundsError
from billing.holds import ACCOUNT_MISSING, hold_plpgsql
from billing.ledger import project_ref
from core.db import Params, savepoint_if_nested, statements_prepared
from metering.models import Job

HOLD = "metering_reservation_hold"  # the job and its hold; says whether the project covered it
CREATE = "metering_reservation_create"  # the same, refused (FUNDS_SHORT) when it did not
FUNDS_SHORT = "MBFND"  # the SQLSTATE of a refusal (and billing.holds.ACCOUNT_MISSING); either
# rolls the whole call back


def _job_columns() -> list[str]:
    return [f.column for f in Job._meta.local_concrete_fields if not f.primary_key]


def functions_sql() -> str:
    """CREATE FUNCTION of both: the job's INSERT from the model, the hold from billing."""
    declarations, hold = hold_plpgsql(
        project="p_project",
        amount="p_amount",
        entry="p_entry",
        at="p_at",
        actor_user="p_actor_user",
        actor_token="p_actor_token",  # noqa: S106 - an argument name, not a secret
        job="p_job",
        held="held",
    )
    columns = ", ".join(f'"{column}"' for column in _job_columns())
    arguments = """p_job_row jsonb, p_job uuid, p_project bigint, p_amount numeric, p_entry uuid,
    p_actor_user bigint, p_actor_token bigint, p_at timestamptz"""
    # Only the model's columns and our own statements go into it, never input.
    return f"""
CREATE OR REPLACE FUNCTION {HOLD}(
    {arguments}, OUT job_id bigint, OUT held boolean
) LANGUAGE plpgsql AS $function$
DECLARE
    {declarations}
BEGIN
    INSERT INTO metering_job ({columns})
    SELECT {columns} FROM jsonb_populate_record(NULL::metering_job, p_job_row)
    RETURNING id INTO job_id;{hold}
END
$function$;

CREATE OR REPLACE FUNCTION {CREATE}({arguments}) RETURNS bigint
LANGUAGE plpgsql AS $function$
DECLARE
    hold record;
BEGIN
    SELECT * INTO hold FROM {HOLD}(p_job_row, p_job, p_project, p_amount, p_entry,
                                   p_actor_user, p_actor_token, p_at);
    IF NOT hold.held THEN
        RAISE EXCEPTION 'the project''s credits do not cover it' USING ERRCODE = '{FUNDS_SHORT}';
    END IF;
    RETURN hold.job_id;
END
$function$;
"""  # noqa: S608


# Functions of other apps built on these (keys.hold_function registers at startup): each a
# (names, CREATE statements) factory, installed with these in one transaction.
_dependents: list[Callable[[], tuple[list[str], str]]] = []


def dependent_register(factory: Callable[[], tuple[list[str], str]]) -> None:
    if factory not in _dependents:
        _dependents.append(factory)


def install(**kwargs: Any) -> None:
    """post_migrate: (re)create these functions and their dependents from the current
    statements, all in one transaction."""
    names, sql = [HOLD, CREATE], functions_sql()
    for factory in _dependents:
        more_names, more_sql = factory()
        names, sql = names + more_names, sql + more_sql
    functions_replace(names, sql, using=kwargs.get("using"))


def functions_replace(names: list[str], sql: str, *, using: str | None = None) -> None:
    """Drop every version of the named functions and run `sql` (their CREATEs) in one
    transaction — CREATE OR REPLACE alone cannot change a function's arguments or results, and
    callers see the old functions or the new ones, never none — unless they are already what
    `sql` makes (each carries a digest of it as its comment): a migrate that changes nothing
    leaves every session's cached plans alone."""
    alias = using or DEFAULT_DB_ALIAS
    digest = hashlib.sha256(sql.encode()).hexdigest()[:32]
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT oid::regprocedure::text, obj_description(oid, 'pg_proc') FROM pg_proc"
            " WHERE proname = ANY(%s) AND pronamespace = current_schema()::regnamespace",
            [names],
        )
        installed = cursor.fetchall()
        if len(installed) == len(names) and all(note == digest for _, note in installed):
            return
        for signature, _ in installed:
            cursor.execute(f"DROP FUNCTION {signature}")
        cursor.execute(sql)
        cursor.execute(
            "SELECT oid::regprocedure::text FROM pg_proc"
            " WHERE proname = ANY(%s) AND pronamespace = current_schema()::regnamespace",
            [names],
        )
        for (signature,) in cursor.fetchall():
            cursor.execute(f"COMMENT ON FUNCTION {signature} IS '{digest}'")


def _json_value(value: object) -> str:
    """Decimals, datetimes (to the microsecond) and UUIDs as PostgreSQL reads them back."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal | uuid_lib.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} in a job row")


def hold_arguments(job: Job, *, actor: User | ServiceToken | None) -> dict[str, object]:
    """The arguments both functions take, named as `HOLD_ARGUMENTS` binds them."""
    row = {column: getattr(job, column) for column in _job_columns()}
    return {
        "job_row": json.dumps(row, default=_json_value),
        "job": job.uuid,
        "project": job.project_id,
        "amount": job.reserved_amount,
        "entry": uuid_lib.uuid4(),
        "actor_user": actor.pk if isinstance(actor, User) else None,
        "actor_token": actor.pk if isinstance(actor, ServiceToken) else None,
        "at": job.reserved_at,
    }


HOLD_ARGUMENTS = """%(job_row)s::jsonb, %(job)s, %(project)s, %(amount)s, %(entry)s,
       %(actor_user)s, %(actor_token)s, %(at)s"""


def function_call(
    sql: str, params: Params, refusals: dict[str, Callable[[str], Exception]]
) -> tuple[Any, ...]:
    """Run one call of these functions, prepared; the SQLSTATEs in `refusals` become those
    exceptions (with nothing written), any other error Django's."""
    connection = connections[DEFAULT_DB_ALIAS]
    with (
        savepoint_if_nested(),
        connection.wrap_database_errors,
        statements_prepared() as raw,
        psycopg.Cursor(raw) as cursor,
    ):
        try:
            cursor.execute(sql, params, prepare=True)
        except psycopg.Error as exc:
            refusal = refusals.get(exc.sqlstate or "")
            if refusal is None:
                raise
            raise refusal(exc.diag.message_primary or "") from None
        return cursor.fetchone()  # type: ignore[return-value]


_CREATE_CALL = f"SELECT {CREATE}({HOLD_ARGUMENTS})"


def reservation_write(job: Job, *, actor: User | ServiceToken | None) -> Job:
    """Insert the unsaved `job` and hold its reserved amount: InsufficientFundsError, with
    nothing written, when the project's spendable grants do not cover it."""

    def short(_: str) -> Exception:
        return InsufficientFundsError(
            "Reservation not allowed because of insufficient funds",
            requested_amount=job.reserved_amount,
        )

    (job.pk,) = function_call(
        _CREATE_CALL,
        hold_arguments(job, actor=actor),
        {FUNDS_SHORT: short, ACCOUNT_MISSING: LookupError},
    )
    job._state.adding, job._state.db = False, DEFAULT_DB_ALIAS
    if job.reserved_amount > 0:  # committed already, unless the caller's transaction is open
        recharge_trigger.debited_committed([project_ref(Project(pk=job.project_id))])
    return job
