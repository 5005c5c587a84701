"""authorize's writes as one PostgreSQL function: the job and its hold
(metering.reserve_sql's function), the key's cap and its KeyJob row in one prepared call that
commits by itself. Generated from keys.caps' statement and installed after every `migrate`,
like metering's."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from accounts.models import ServiceToken
from billing.holds import ACCOUNT_MISSING
from core.db import sql_bound
from keys.caps import CAP_AND_KEY_JOB
from metering import reserve_sql
from metering.models import Job

FUNCTION = "keys_authorize_hold"
CAP_EXCEEDED = "MBCAP"


class CapExceeded(Exception):
    pass


class FundsShort(Exception):
    pass


def function_sql() -> str:
    cap = sql_bound(
        CAP_AND_KEY_JOB,
        {
            "key": "p_key",
            "limited": "p_limited",
            "slug": "p_slug",
            "units": "p_units",
            "held": "p_cap_held",
            "at": "p_at",
            "job": "p_job",
        },
    )
    # The key's row is locked after the ledger's accounts, as settling a job locks them.
    return f"""
CREATE OR REPLACE FUNCTION {FUNCTION}(
    p_job_row jsonb, p_job uuid, p_project bigint, p_amount numeric, p_entry uuid,
    p_actor_user bigint, p_actor_token bigint, p_at timestamptz,
    p_key bigint, p_limited boolean, p_slug text, p_units bigint, p_cap_held numeric
) RETURNS numeric LANGUAGE plpgsql AS $function$
DECLARE
    hold record;
    cap_remaining numeric;
BEGIN
    SELECT * INTO hold FROM {reserve_sql.HOLD}(p_job_row, p_job, p_project, p_amount, p_entry,
                                               p_actor_user, p_actor_token, p_at);
    {cap} INTO cap_remaining;
    IF NOT FOUND THEN  -- the cap is checked before the project
        RAISE EXCEPTION 'the key''s credit limit does not cover it'
            USING ERRCODE = '{CAP_EXCEEDED}';
    END IF;
    IF NOT hold.held THEN
        RAISE EXCEPTION 'the project''s credits do not cover it'
            USING ERRCODE = '{reserve_sql.FUNDS_SHORT}';
    END IF;
    RETURN cap_remaining;
END
$function$;
"""  # noqa: S608


def functions() -> tuple[list[str], str]:
    """For metering.reserve_sql's install, which runs it with its own."""
    return [FUNCTION], function_sql()


_CALL = f"""SELECT {FUNCTION}({reserve_sql.HOLD_ARGUMENTS},
       %(key)s, %(limited)s, %(slug)s, %(units)s, %(cap_held)s)"""


@dataclass(frozen=True)
class HoldCall:
    job: Job  # unsaved, its reserved_amount the estimated cost
    key_id: int
    limited: bool
    slug: str
    units: int
    token: ServiceToken


def hold_call(call: HoldCall) -> Decimal | None:
    """Run the function: the cap's remaining credits (None for a key without a cap).
    CapExceeded or FundsShort when refused, with nothing written; LookupError without the
    project's ledger accounts. Outside a transaction it commits by itself."""
    params = reserve_sql.hold_arguments(call.job, actor=call.token) | {
        "key": call.key_id,
        "limited": call.limited,
        "slug": call.slug,
        "units": call.units,
        "cap_held": call.job.reserved_amount if call.limited else Decimal(0),
    }
    (remaining,) = reserve_sql.function_call(
        _CALL,
        params,
        {
            CAP_EXCEEDED: CapExceeded,
            reserve_sql.FUNDS_SHORT: FundsShort,
            ACCOUNT_MISSING: LookupError,
        },
    )
    return remaining
