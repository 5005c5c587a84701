"""Holds that a caller writes together with rows of its own, in one round trip.

`hold_plan` gives the statements of a hold (project → its reservation account, spendable grants
in burn order); the caller runs them in its transaction's pipeline after its own statements,
and `HoldPlan.held` says whether the project covered the amount. A hold that did not is written
nowhere; the caller rolls its transaction back. This is hold_create for the authorize hot path,
where every round trip counts: the same ledger statements, without the savepoint."""

from __future__ import annotations

import uuid as uuid_lib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from accounts.models import Project
from billing import recharge_trigger
from billing.ledger import Actor, TransferPlan, project_ref, reservation_ref, transfer_plan
from billing.models import EntryType
from core.db import Params


@dataclass(frozen=True)
class HoldPlan:
    transfer: TransferPlan

    @property
    def statements(self) -> list[tuple[str, Params]]:
        return self.transfer.statements

    def held(self, results: list[list[tuple[Any, ...]]]) -> bool:
        """From the results of `statements` (in order): whether the hold was written."""
        locked, wrote = results
        if self.transfer.written(locked, wrote) is None:
            return False
        recharge_trigger.debited(self.transfer.refs[:1])
        return True


def hold_plan(
    *, project: Project, amount: Decimal, job_uuid: uuid_lib.UUID, actor: Actor = None
) -> HoldPlan:
    return HoldPlan(
        transfer_plan(
            type=EntryType.RESERVE,
            debit=project_ref(project),
            credit=reservation_ref(project),
            amount=amount,
            actor=actor,
            job_uuid=job_uuid,
        )
    )
