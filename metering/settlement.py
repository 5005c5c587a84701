"""Settlement of batch usage events: `usage_events_settle` (a periodic task) claims unsettled
accepted events in batches, sums their cost per project and service, and charges each sum once
through billing, marking the events settled in the same transaction. So ingestion is not bound
by a ledger entry per event.

Cost of an event: the tiered cost of its units from zero (metering/cost.py), at the price of
its service valid for its project's lab at the event's time, less the lab's discount valid at
that time. A group's sum is quantized once (core.money.credits_quantize).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import DatabaseError, transaction
from django.utils import timezone

from accounts.models import Project
from billing import charges
from billing.errors import InsufficientFundsError
from core.db import execute_prepared
from core.money import CREDIT_QUANTUM, MAX_CREDITS, credits_quantize
from metering.cost import usage_cost
from metering.models import Service, UsageEvent, UsageEventOutcome
from metering.price_books import DiscountBook, PriceBook

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
SETTLE_REASON = "usage_events"


@dataclass
class SettleRun:
    """What one settlement run did, for its log line and its caller."""

    events: int = 0  # settled (charged) events
    charges: int = 0  # groups (project, service) charged
    units: int = 0
    amount: Decimal = ZERO
    left: int = 0  # claimed but left unsettled for a later run (no price, failed charge)
    batches: int = 0
    seconds: float = field(default=0.0)

    def __str__(self) -> str:
        return (
            f"{self.events} event(s) settled in {self.charges} charge(s), {self.units} units,"
            f" {self.amount} credits; {self.left} left for later; {self.batches} batch(es) in"
            f" {self.seconds:.2f} s"
        )


@dataclass
class _Group:
    project_id: int
    lab_id: int
    service: Service
    cost: Decimal = ZERO  # full precision, quantized once
    units: int = 0
    event_ids: list[int] = field(default_factory=list)

    def orders(self) -> list[charges.ChargeOrder]:
        """The group's charge, in parts below MAX_CREDITS: one amount never exceeds what a
        single movement may carry, however many events a batch sums."""
        total, orders = credits_quantize(self.cost), []
        metadata = {
            "service": self.service.slug,  # read by the usage rollups
            "service_type": self.service.type,
            "events": len(self.event_ids),
            "units": self.units,
        }
        part = MAX_CREDITS - CREDIT_QUANTUM
        while True:
            amount = min(total, part)
            orders.append(
                charges.ChargeOrder(
                    project_id=self.project_id,
                    lab_id=self.lab_id,
                    amount=amount,
                    reason=SETTLE_REASON,
                    metadata=metadata,
                )
            )
            total -= amount
            if total <= 0:
                return orders


_MARK_SETTLED = "UPDATE metering_usageevent SET settled_at = %s WHERE id = ANY(%s)"


def _groups(rows: Sequence[tuple[int, int, int, int, datetime]]) -> tuple[list[_Group], int]:
    """The batch's events summed per (project, service): (groups, events left unpriced)."""
    labs = dict(Project.objects.filter(pk__in={row[1] for row in rows}).values_list("pk", "lab_id"))
    services = Service.objects.in_bulk({row[2] for row in rows})
    prices = PriceBook(services, set(labs.values()))
    discounts = DiscountBook(set(labs.values()))
    costs: dict[tuple[int, int, Decimal], Decimal] = {}
    groups: dict[tuple[int, int], _Group] = {}
    left = 0
    for pk, project_id, service_id, units, occurred_at in rows:
        lab_id = labs[project_id]
        price = prices.at(service_id, lab_id, occurred_at)
        if price is None:  # a price version was cut short after the event was accepted
            logger.error("usage event %s: no price at %s, left unsettled", pk, occurred_at)
            left += 1
            continue
        discount = discounts.at(lab_id, occurred_at)
        key = (price.pk, units, discount)
        if key not in costs:
            costs[key] = usage_cost(prices.tiers(price), 0, units, discount)
        group = groups.get((project_id, service_id))
        if group is None:
            group = groups[(project_id, service_id)] = _Group(
                project_id, lab_id, services[service_id]
            )
        group.cost += costs[key]
        group.units += units
        group.event_ids.append(pk)
    return list(groups.values()), left


def _charged(groups: list[_Group]) -> list[_Group]:
    """Charge every group in one billing call; if that fails, each in its own savepoint, so
    one project that cannot be charged (a lab that never had credits) holds back only its
    own events. Returns the groups charged."""
    if not groups:
        return []
    try:
        with transaction.atomic():
            charges.usage_charges_post(orders=[o for group in groups for o in group.orders()])
        return groups
    except (DatabaseError, InsufficientFundsError):
        logger.warning("usage_events_settle: a batch charge failed, charging its groups singly")
    done = []
    for group in groups:
        try:
            with transaction.atomic():
                charges.usage_charges_post(orders=group.orders())
            done.append(group)
        except (DatabaseError, InsufficientFundsError):
            logger.exception(
                "usage_events_settle: %s events of project %s, service %s left unsettled",
                len(group.event_ids),
                group.project_id,
                group.service,
            )
    return done


def usage_events_settle(*, now: datetime | None = None, batch_size: int = 5000) -> SettleRun:
    """Charge the accepted events received up to `now` and not settled yet: a batch per
    transaction, in id order. Each batch claims its events (skipping those another settler
    holds), charges one sum per (project, service) and marks its events settled in the same
    transaction: running it twice, or two at once, charges every event once, and a run killed
    midway loses only its open batch, which the next run settles."""
    now = now or timezone.now()
    run, cursor, started = SettleRun(), 0, time.monotonic()
    # Served by the partial index usage_event_settle_queue.
    queue = (
        UsageEvent.objects.filter(
            outcome=UsageEventOutcome.ACCEPTED, settled_at__isnull=True, received_at__lte=now
        )
        .order_by("pk")
        .select_for_update(skip_locked=True)
    )
    while True:
        with transaction.atomic():
            rows = list(
                queue.filter(pk__gt=cursor).values_list(
                    "pk", "project_id", "service_id", "units", "occurred_at"
                )[:batch_size]
            )
            if not rows:
                break
            cursor = rows[-1][0]
            groups, left = _groups(rows)
            charged = _charged(groups)
            charged_ids = {id(group) for group in charged}
            settled = [pk for group in charged for pk in group.event_ids]
            execute_prepared(_MARK_SETTLED, [now, settled])
            run.batches += 1
            run.events += len(settled)
            run.charges += len(charged)
            run.units += sum(group.units for group in charged)
            run.amount += sum((credits_quantize(group.cost) for group in charged), ZERO)
            run.left += left + sum(
                len(group.event_ids) for group in groups if id(group) not in charged_ids
            )
    run.seconds = time.monotonic() - started
    if run.batches:
        logger.info("usage_events_settle: %s", run)
    return run
