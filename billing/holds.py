"""A hold as PL/pgSQL, for functions that write it together with rows of their own in one call
(metering.reserve_sql: a job and its hold). The statements are the ledger's own — the account
lock and the transfer in burn order of `billing.ledger.transfer_plan` — with their parameters
bound to the calling function's arguments, so the ledger's rules stay written once. In a
PL/pgSQL function each statement reads with a fresh snapshot, as separate statements do, so
the transfer sees what a holder of the account locks committed before it got them."""

from __future__ import annotations

from decimal import Decimal

from accounts.models import Project
from billing.ledger import project_ref, reservation_ref, transfer_plan
from billing.models import EntryType
from core.db import sql_bound

ACCOUNT_MISSING = "MBACC"  # the SQLSTATE the block raises without the project's accounts


def hold_plpgsql(
    *, project: str, amount: str, entry: str, at: str, actor_user: str, actor_token: str,
    job: str, held: str,
) -> tuple[str, str]:  # fmt: skip
    """(declarations, statements) of a PL/pgSQL block moving `amount` from the project's budget
    to its reservation account, spendable grants in burn order, for the job `job`; `held` (a
    boolean variable of the caller's) says whether the project covered it. Every argument is
    the SQL expression (an argument of the caller, usually) to use."""
    dummy = Project(pk=0, lab_id=0)
    plan = transfer_plan(
        type=EntryType.RESERVE,
        debit=project_ref(dummy),
        credit=reservation_ref(dummy),
        amount=Decimal(0),
    )
    lock, transfer = (sql for sql, _ in plan.statements)
    lock = sql_bound(lock, {"owner0": project, "owner1": project})
    transfer = sql_bound(
        transfer,
        {
            "debit_owner": project,
            "credit_owner": project,
            "amount": amount,
            "uuid": entry,
            "type": f"'{EntryType.RESERVE.value}'",
            "at": at,
            "actor_user": actor_user,
            "actor_token": actor_token,
            "reason": "''",
            "metadata": "'{}'",
            "key": "NULL::text",
            "fingerprint": "''",
            "job": job,
        },
    )
    declarations = "hold_locked integer := 0;\n    hold_entry bigint;"
    statements = f"""
    {held} := true;
    IF {amount} > 0 THEN
        PERFORM {lock.removeprefix("SELECT ")};
        GET DIAGNOSTICS hold_locked = ROW_COUNT;
        {transfer} INTO hold_entry;
        IF hold_entry IS NULL AND hold_locked < 2 THEN
            RAISE EXCEPTION 'no ledger account for project %', {project}
                USING ERRCODE = '{ACCOUNT_MISSING}';
        END IF;
        {held} := hold_entry IS NOT NULL;
    END IF;"""
    return declarations, statements
