"""Plans: credits a lab receives every period, as a grant that expires when the period ends.

Starting a plan grants its first period at once; the renewal sweep closes each period that has
ended (its grant expires, so what is left goes back to the system account) and grants the next:
the plan's credits, plus, with carry-over, what the old grant gave back, up to the plan's
maximum. Every grant's idempotency key names the subscription and period, so a period is never
granted twice. Lock order: the lab (plan changes only), then the subscription row, then the
grant, then ledger accounts.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal

from dateutil.relativedelta import relativedelta
from django.db import DatabaseError, transaction
from django.utils import timezone

from accounts.models import Lab, Project, ServiceToken, User
from accounts.selectors import Actor
from accounts.services import DEFAULT_PROJECT_NAME
from billing.errors import PlanError
from billing.models import (
    Grant,
    GrantSource,
    Plan,
    PlanPeriod,
    PlanRollover,
    PlanSubscription,
)
from billing.selectors import grant_expired_total, plan_default
from billing.services import budget_grant, grant_expire
from core.money import decimal_plain

ZERO = Decimal(0)
logger = logging.getLogger(__name__)


# Periods of a fixed length (a month's length depends on the month).
_FIXED_PERIODS = {PlanPeriod.WEEKLY: timedelta(weeks=1), PlanPeriod.DAILY: timedelta(days=1)}


def period_bounds(*, started_at: datetime, period: str, index: int) -> tuple[datetime, datetime]:
    """Period `index` of a plan started at `started_at`; months clamp to the month's end."""

    def shifted(n: int) -> datetime:
        if period == PlanPeriod.MONTHLY:
            return started_at + relativedelta(months=n)
        return started_at + n * _FIXED_PERIODS[period]

    return shifted(index), shifted(index + 1)


def period_index_at(*, started_at: datetime, period: str, at: datetime) -> int:
    """The index of the period that contains `at` (0 before the plan started)."""
    if at <= started_at:
        return 0
    at = at.astimezone(started_at.tzinfo)  # months are counted on the start's calendar
    if period == PlanPeriod.MONTHLY:
        months = (at.year - started_at.year) * 12 + at.month - started_at.month
        return months if started_at + relativedelta(months=months) <= at else months - 1
    return (at - started_at) // _FIXED_PERIODS[period]


def _period_grant(subscription: PlanSubscription, *, carried: Decimal, actor: Actor) -> Grant:
    plan = subscription.plan
    index = subscription.period_index
    return budget_grant(
        project=subscription.project,
        amount=plan.credits + carried,
        category=plan.category,
        priority=plan.priority,
        effective_at=subscription.period_start,
        expires_at=subscription.period_end,
        source=GrantSource.PLAN,
        source_ref=str(subscription.uuid),
        reason=f"{plan.name} plan, period {index + 1}",
        metadata={
            "plan": plan.slug,
            "subscription": str(subscription.uuid),
            "period": index,
            "carried": decimal_plain(carried),
        },
        actor=actor,
        idempotency_key=f"plan:{subscription.uuid}:{index}",
    )


def _default_project(lab: Lab) -> Project:
    project = (
        lab.projects.filter(name=DEFAULT_PROJECT_NAME).order_by("id").first()
        or lab.projects.order_by("id").first()
    )
    if project is None:
        raise PlanError("The lab has no project to receive the plan's credits")
    return project


@transaction.atomic
def plan_subscribe(
    *, lab: Lab, plan: Plan, project: Project | None = None, actor: Actor = None
) -> PlanSubscription:
    """Put a lab on a plan from now, ending the plan it was on, and grant the first period's
    credits to `project` (default: the lab's "Default" project, else its oldest). The credits
    of the plan it leaves stay until their period ends. A lab already on this plan (for this
    project, or with none named) stays as it is: a retried or doubled request grants nothing
    more, even once the plan is no longer offered."""
    if project is not None and project.lab_id != lab.pk:
        raise PlanError("The project must belong to the lab")
    # Serializes plan changes of one lab, so the next one's reads see this one's row.
    # NO KEY: subscriptions and grants reference the lab.
    Lab.objects.select_for_update(no_key=True).filter(pk=lab.pk).first()
    current = (
        PlanSubscription.objects.select_for_update(no_key=True, of=("self",))
        .filter(lab=lab, ended_at__isnull=True)
        .select_related("plan")
        .first()
    )
    now = timezone.now()
    term_over = current is not None and current.term_over
    if (
        current is not None
        and not term_over
        and current.plan_id == plan.pk
        and (project is None or project.pk == current.project_id)
    ):
        return current
    if not plan.active:
        raise PlanError("This plan is not offered any more")
    project = project or _default_project(lab)
    if term_over:  # closed as its renewal would have closed it
        current.ended_at = current.period_end
        current.save(update_fields=["ended_at", "updated_at"])
        if current.grant is not None:
            grant_expire(grant=current.grant)
    else:
        PlanSubscription.objects.filter(lab=lab, ended_at__isnull=True).update(
            ended_at=now, updated_at=now, **_by("ended_by", actor)
        )
    start, end = period_bounds(started_at=now, period=plan.period, index=0)
    subscription = PlanSubscription.objects.create(
        lab=lab,
        plan=plan,
        project=project,
        started_at=now,
        period_start=start,
        period_end=end,
        **_by("created_by", actor),
    )
    subscription.grant = _period_grant(subscription, carried=ZERO, actor=actor)
    subscription.save(update_fields=["grant", "updated_at"])
    return subscription


@transaction.atomic
def plan_end(*, subscription: PlanSubscription, actor: Actor = None) -> PlanSubscription:
    """Stop renewing. The current period's credits stay until the period ends."""
    subscription = PlanSubscription.objects.select_for_update(no_key=True).get(pk=subscription.pk)
    if subscription.ended_at is None:
        subscription.ended_at = timezone.now()
        for field, value in _by("ended_by", actor).items():
            setattr(subscription, field, value)
        subscription.save(update_fields=["ended_at", "ended_by", "ended_by_token", "updated_at"])
    return subscription


def _by(field: str, actor: Actor) -> dict[str, User | ServiceToken | None]:
    """`field` and `field`_token, as the actor is a person or a service token."""
    return {
        field: actor if isinstance(actor, User) else None,
        f"{field}_token": actor if isinstance(actor, ServiceToken) else None,
    }


def _carried(subscription: PlanSubscription) -> Decimal:
    """Close the period's grant (expire it, if the grant sweep has not yet) and return what the
    next period takes over from it."""
    grant = subscription.grant
    if grant is None:
        return ZERO
    grant_expire(grant=grant)
    plan = subscription.plan
    if plan.rollover != PlanRollover.CARRY or plan.rollover_max is None:
        return ZERO
    return min(grant_expired_total(grant), plan.rollover_max)


@transaction.atomic
def plan_renew(*, subscription_id: int, now: datetime | None = None) -> bool:
    """Move an open subscription whose period has ended into the period that contains `now`,
    with that period's grant, or end it if that was the plan's last period. Periods missed
    entirely (no sweep ran through them) are not granted after the fact. False, writing
    nothing, when there is nothing to renew."""
    now = now or timezone.now()
    subscription = (
        PlanSubscription.objects.select_for_update(no_key=True, of=("self",))
        .select_related("plan", "project", "grant")
        .get(pk=subscription_id)
    )
    if subscription.ended_at is not None or subscription.period_end > now:
        return False
    carried = _carried(subscription)
    started_at, period, periods = (
        subscription.started_at,
        subscription.plan.period,
        subscription.plan.periods,
    )
    index = max(
        subscription.period_index + 1,
        period_index_at(started_at=started_at, period=period, at=now),
    )
    if periods is not None and index >= periods:
        # A trial's or a fixed term's end (a late sweep too: the periods it missed were the
        # term's last or after it): the lab is on no plan from the term's end.
        _, term_end = period_bounds(started_at=started_at, period=period, index=periods - 1)
        subscription.ended_at = max(term_end, subscription.period_end)
        subscription.save(update_fields=["ended_at", "updated_at"])
        return True
    start, end = period_bounds(started_at=started_at, period=period, index=index)
    subscription.period_index, subscription.period_start, subscription.period_end = (
        index,
        start,
        end,
    )
    subscription.grant = _period_grant(subscription, carried=carried, actor=None)
    subscription.save(
        update_fields=["period_index", "period_start", "period_end", "grant", "updated_at"]
    )
    return True


def plan_periods_renew(*, now: datetime | None = None, batch: int = 500) -> int:
    """Renew every open subscription whose period has ended by `now` (not later than the real
    time: the old grant must have expired), one per transaction; those another worker holds
    are skipped. Safe to run twice or to kill midway. Returns how many renewed (or ended, at
    the end of their term)."""
    now = now or timezone.now()
    renewed, failed = 0, set()
    while renewed < batch:
        with transaction.atomic():
            # Served by the partial index plan_subscription_renewals.
            due = (
                PlanSubscription.objects.select_for_update(skip_locked=True, no_key=True)
                .filter(period_end__lte=now, ended_at__isnull=True)
                .exclude(pk__in=failed)
                .order_by("period_end", "id")
                .values_list("pk", flat=True)
                .first()
            )
            if due is None:
                break
            try:
                with transaction.atomic():
                    plan_renew(subscription_id=due, now=now)
            except DatabaseError:
                raise  # the task retries the whole run
            except Exception:
                # One subscription that cannot renew must not hold up every other lab's.
                logger.exception("plan subscription %s could not renew", due)
                failed.add(due)
                continue
            renewed += 1
    return renewed


def periods_ending(
    *, now: datetime, within: timedelta, batch: int = 500
) -> list[tuple[int, datetime]]:
    """Open subscriptions whose period ends after `now` and within `within` of it, with that
    end (the first `batch`; the sweep renews the others): the renewal sweep has each renewed
    at its end, rather than up to a sweep later."""
    return list(
        PlanSubscription.objects.filter(
            period_end__gt=now, period_end__lte=now + within, ended_at__isnull=True
        )
        .order_by("period_end", "id")
        .values_list("pk", "period_end")[:batch]
    )


def default_plan_subscribe(*, lab: Lab, project: Project) -> PlanSubscription | None:
    """A new personal lab starts on the default plan, if operators have set one."""
    plan = plan_default()
    return None if plan is None else plan_subscribe(lab=lab, plan=plan, project=project)
