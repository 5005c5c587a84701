"""authorize's writes as one PostgreSQL function: the job, the hold, the key's cap and its
KeyJob row in one prepared call that commits by itself, instead of a pipeline of four
statements between a BEGIN and a COMMIT (the largest part of a decision's client CPU).

The function is generated from the statements the Python paths run — the job's INSERT from
the model, billing's account lock and transfer (burn order), keys.caps' cap statement — and
installed again after every `migrate`, so none of them is written twice. Each statement of a
PL/pgSQL function reads with a fresh snapshot, as the pipelined statements did, so the
transfer sees what a holder of the account locks committed before it got them."""

from __future__ import annotations

import json
import re
import uuid as uuid_lib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from accounts.models import Project
from billing.ledger import project_ref, reservation_ref, transfer_plan
from billing.models import EntryType
from core.db import statements_prepared
from keys.caps import CAP_AND_KEY_JOB
from metering.models import Job

FUNCTION = "keys_authorize_hold"
CAP_EXCEEDED = "MBCAP"  # SQLSTATEs the function raises; either rolls the whole call back
FUNDS_SHORT = "MBFND"
ACCOUNT_MISSING = "MBACC"


class CapExceeded(Exception):
    pass


class FundsShort(Exception):
    pass


_REFUSALS: dict[str, type[Exception]] = {
    CAP_EXCEEDED: CapExceeded,
    FUNDS_SHORT: FundsShort,
    ACCOUNT_MISSING: LookupError,
}


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _bound(sql: str, arguments: dict[str, str]) -> str:
    """A psycopg statement with its %(name)s placeholders replaced by the function's
    arguments (or literals); a placeholder without one is an error."""
    return _PLACEHOLDER.sub(lambda match: arguments[match.group(1)], sql.strip())


def _job_columns() -> list[str]:
    return [f.column for f in Job._meta.local_concrete_fields if not f.primary_key]


def function_sql() -> str:
    """CREATE OR REPLACE FUNCTION, from the statements of the Python paths."""
    dummy = Project(pk=0, lab_id=0)
    hold = transfer_plan(
        type=EntryType.RESERVE,
        debit=project_ref(dummy),
        credit=reservation_ref(dummy),
        amount=Decimal(0),
    )
    lock, transfer = (sql for sql, _ in hold.statements)
    lock = _bound(lock, {"owner0": "p_project", "owner1": "p_project"})
    transfer = _bound(
        transfer,
        {
            "debit_owner": "p_project",
            "credit_owner": "p_project",
            "amount": "p_amount",
            "uuid": "p_entry",
            "type": f"'{EntryType.RESERVE.value}'",
            "at": "p_at",
            "actor_user": "NULL::bigint",
            "actor_token": "p_actor_token",
            "reason": "''",
            "metadata": "'{}'",
            "key": "NULL::text",
            "fingerprint": "''",
            "job": "p_job",
        },
    )
    cap = _bound(
        CAP_AND_KEY_JOB,
        {
            "key": "p_key",
            "limited": "p_limited",
            "slug": "p_slug",
            "units": "p_units",
            "held": "p_cap_held",
            "period": "p_period",
            "at": "p_at",
            "job": "p_job",
        },
    )
    columns = ", ".join(f'"{column}"' for column in _job_columns())
    # Only the model's columns and our own statements go into it, never input.
    return f"""
CREATE OR REPLACE FUNCTION {FUNCTION}(
    p_job_row jsonb, p_job uuid, p_project bigint, p_amount numeric, p_entry uuid,
    p_actor_token bigint, p_key bigint, p_limited boolean, p_slug text, p_units bigint,
    p_cap_held numeric, p_period timestamptz, p_at timestamptz
) RETURNS numeric LANGUAGE plpgsql AS $function$
DECLARE
    locked integer := 0;
    entry_id bigint;
    cap_remaining numeric;
    counted boolean;
BEGIN
    INSERT INTO metering_job ({columns})
    SELECT {columns} FROM jsonb_populate_record(NULL::metering_job, p_job_row);
    IF p_amount > 0 THEN
        PERFORM {lock.removeprefix("SELECT ")};
        GET DIAGNOSTICS locked = ROW_COUNT;
        {transfer} INTO entry_id;
    END IF;
    {cap} INTO cap_remaining;
    counted := FOUND;
    IF NOT counted THEN  -- the cap is checked before the project
        RAISE EXCEPTION 'the key''s credit limit does not cover it'
            USING ERRCODE = '{CAP_EXCEEDED}';
    END IF;
    IF p_amount > 0 AND entry_id IS NULL THEN
        IF locked < 2 THEN
            RAISE EXCEPTION 'no ledger account for project %', p_project
                USING ERRCODE = '{ACCOUNT_MISSING}';
        END IF;
        RAISE EXCEPTION 'the project''s credits do not cover it'
            USING ERRCODE = '{FUNDS_SHORT}';
    END IF;
    RETURN cap_remaining;
END
$function$;
"""  # noqa: S608


def install(**kwargs: Any) -> None:
    """post_migrate: (re)create the function from the current statements."""
    connection = connections[kwargs.get("using", DEFAULT_DB_ALIAS)]
    with connection.cursor() as cursor:
        cursor.execute(function_sql())


_CALL = f"""SELECT {FUNCTION}(%(job_row)s::jsonb, %(job)s, %(project)s, %(amount)s, %(entry)s,
       %(token)s, %(key)s, %(limited)s, %(slug)s, %(units)s, %(cap_held)s, %(period)s, %(at)s)"""


def _json_value(value: object) -> str:
    """Decimals, datetimes (to the microsecond) and UUIDs as PostgreSQL reads them back."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal | uuid_lib.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} in a job row")


@dataclass(frozen=True)
class HoldCall:
    job: Job
    key_id: int
    limited: bool
    slug: str
    units: int
    amount: Decimal
    period: datetime | None
    actor_token_id: int | None
    at: datetime


def hold_call(call: HoldCall) -> Decimal | None:
    """Run the function: the cap's remaining credits (None for a key without a cap).
    CapExceeded or FundsShort when refused, with nothing written; LookupError without the
    project's ledger accounts. Outside a transaction it commits by itself; inside one, in a
    savepoint, so that a refusal undoes the call only."""
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.in_atomic_block:
        with transaction.atomic():
            return _hold_call(call)
    return _hold_call(call)


def _hold_call(call: HoldCall) -> Decimal | None:
    job = call.job
    row = {column: getattr(job, column) for column in _job_columns()}
    params = {
        "job_row": json.dumps(row, default=_json_value),
        "job": job.uuid,
        "project": job.project_id,
        "amount": call.amount,
        "entry": uuid_lib.uuid4(),
        "token": call.actor_token_id,
        "key": call.key_id,
        "limited": call.limited,
        "slug": call.slug,
        "units": call.units,
        "cap_held": call.amount if call.limited else Decimal(0),
        "period": call.period,
        "at": call.at,
    }
    connection = connections[DEFAULT_DB_ALIAS]
    with connection.wrap_database_errors, statements_prepared() as raw, psycopg.Cursor(raw) as cur:
        try:
            cur.execute(_CALL, params, prepare=True)
        except psycopg.Error as exc:
            refusal = _REFUSALS.get(exc.sqlstate or "")
            if refusal is None:
                raise
            raise refusal(exc.diag.message_primary) from None
        return cur.fetchone()[0]  # type: ignore[index]
