"""Plans: a grant every period that expires when the period ends, reset or carried over."""

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from dateutil.relativedelta import relativedelta
from django.utils import timezone

from accounts.models import Lab
from accounts.services import lab_create, project_create, user_create
from billing import plans, services
from billing.errors import PlanError
from billing.models import (
    EntryType,
    Grant,
    GrantCategory,
    GrantSource,
    JournalEntry,
    Plan,
    PlanPeriod,
    PlanRollover,
    PlanSubscription,
)
from billing.selectors import lab_balance, plan_current
from billing.sweeps import grants_expire
from tests.billing.test_concurrency import run_threads

D = Decimal
JAN_31 = datetime(2027, 1, 31, 10, 0, tzinfo=UTC)


def make_plan(**fields) -> Plan:
    values = {"slug": "starter", "name": "Starter", "credits": D("10"), "period": "monthly"}
    values.update(fields)
    return Plan.objects.create(**values)


def carry_plan(maximum: str) -> Plan:
    return make_plan(rollover=PlanRollover.CARRY, rollover_max=D(maximum))


def budget(project) -> Decimal:
    return next(row.balance for row in lab_balance(project.lab).projects if row.project == project)


def spend(project, amount: str) -> uuid.UUID:
    """Hold `amount` for a job: held credits are not the plan's to take back at renewal."""
    job = uuid.uuid4()
    services.hold_create(project=project, amount=amount, job_uuid=job)
    return job


@pytest.mark.django_db
def test_subscribing_grants_the_first_period_into_the_project(cast):
    plan = make_plan()
    subscription = plans.plan_subscribe(lab=cast.lab, plan=plan, project=cast.beta)
    grant = subscription.grant
    assert (grant.amount, grant.category, grant.source, grant.priority) == (
        D("10"), GrantCategory.PROMOTIONAL, GrantSource.PLAN, 10
    )  # fmt: skip
    assert grant.effective_at == subscription.period_start == subscription.started_at
    assert grant.expires_at == subscription.period_end
    assert subscription.period_end - subscription.period_start >= timedelta(days=28)
    assert (budget(cast.beta), budget(cast.alpha), lab_balance(cast.lab).balance) == (10, 0, 0)
    assert grant.metadata == {
        "plan": "starter", "subscription": str(subscription.uuid), "period": 0, "carried": "0"
    }  # fmt: skip


@pytest.mark.django_db
def test_months_clamp_to_the_month_end_and_weeks_are_seven_days():
    start = datetime(2027, 1, 31, 10, 0, tzinfo=UTC)
    bounds = [plans.period_bounds(started_at=start, period="monthly", index=i) for i in range(3)]
    assert [end.date().isoformat() for _, end in bounds] == [
        "2027-02-28", "2027-03-31", "2027-04-30"
    ]  # fmt: skip
    assert bounds[1][0] == bounds[0][1]  # periods touch: no gap, no overlap
    assert plans.period_bounds(started_at=start, period="weekly", index=2) == (
        start + timedelta(days=14),
        start + timedelta(days=21),
    )
    assert plans.period_bounds(started_at=start, period="daily", index=29) == (
        start + timedelta(days=29),
        start + timedelta(days=30),
    )
    later = start + timedelta(days=29, hours=23)
    assert plans.period_index_at(started_at=start, period="daily", at=later) == 29


@pytest.mark.django_db
def test_a_daily_trial_of_thirty_days_grants_each_day_and_ends_after_the_thirtieth(cast):
    trial = make_plan(slug="trial", credits=D("1"), period="daily", periods=30)
    assert trial.summary == (
        "1 credit daily for 30 days, unused credits expire at the end of each period"
    )
    with time_machine.travel(JAN_31, tick=False):
        plans.plan_subscribe(lab=cast.lab, plan=trial, project=cast.alpha)
        assert budget(cast.alpha) == D("1")
    with time_machine.travel(JAN_31 + timedelta(days=1, seconds=30), tick=False):
        assert plans.plan_periods_renew() == 1
        assert budget(cast.alpha) == D("1")  # the first day's credit expired, the second's came
    with time_machine.travel(JAN_31 + timedelta(days=30, seconds=30), tick=False):
        plans.plan_periods_renew()
        assert plan_current(lab=cast.lab) is None  # the term is over: no plan, no credits
        assert budget(cast.alpha) == 0


@pytest.mark.django_db
def test_reset_plan_takes_back_what_is_left_and_grants_the_full_amount_again(cast):
    with time_machine.travel(JAN_31, tick=False):
        first = plans.plan_subscribe(lab=cast.lab, plan=make_plan(), project=cast.alpha)
        job = spend(cast.alpha, "3")
    with time_machine.travel(datetime(2027, 2, 28, 10, 0, 30, tzinfo=UTC), tick=False):
        assert plans.plan_periods_renew() == 1
        assert plans.plan_periods_renew() == 0  # a second run finds nothing due
        subscription = PlanSubscription.objects.get(pk=first.pk)
        assert subscription.period_index == 1
        assert subscription.period_start == datetime(2027, 2, 28, 10, tzinfo=UTC)
        assert subscription.period_end == datetime(2027, 3, 31, 10, tzinfo=UTC)
        old = Grant.objects.get(pk=first.grant_id)
        assert old.expired_at is not None
        assert subscription.grant.amount == D("10")
        assert subscription.grant.effective_at == old.expires_at  # no gap between periods
        row = lab_balance(cast.lab).projects[0]
        assert (row.balance, row.reserved) == (D("10"), D("3"))  # 7 went back; 3 still held
        # The job's hold, released later, goes to the system account, not to the new period.
        assert services.hold_release(project=cast.alpha, job_uuid=job) == D("3")
        assert budget(cast.alpha) == D("10")


@pytest.mark.parametrize(("held", "maximum", "carried"), [("3", "5", "5"), ("8", "5", "2")])
@pytest.mark.django_db
def test_carry_over_moves_what_is_left_up_to_the_maximum(cast, held, maximum, carried):
    with time_machine.travel(JAN_31, tick=False):
        plans.plan_subscribe(lab=cast.lab, plan=carry_plan(maximum), project=cast.alpha)
        spend(cast.alpha, held)
    with time_machine.travel(datetime(2027, 3, 1, tzinfo=UTC), tick=False):
        assert plans.plan_periods_renew() == 1
        subscription = PlanSubscription.objects.get(lab=cast.lab)
        assert subscription.grant.amount == D("10") + D(carried)
        assert subscription.grant.metadata["carried"] == carried
        assert budget(cast.alpha) == D("10") + D(carried)


@pytest.mark.django_db
def test_carry_over_counts_a_grant_the_expiry_sweep_closed_first(cast):
    """The grant sweep may expire the period's grant before the renewal runs."""
    with time_machine.travel(JAN_31, tick=False):
        plans.plan_subscribe(lab=cast.lab, plan=carry_plan("50"), project=cast.alpha)
        spend(cast.alpha, "4")
    with time_machine.travel(datetime(2027, 3, 1, tzinfo=UTC), tick=False):
        assert grants_expire() == 1
        assert budget(cast.alpha) == 0
        assert plans.plan_periods_renew() == 1
        assert PlanSubscription.objects.get(lab=cast.lab).grant.amount == D("16")
        assert budget(cast.alpha) == D("16")


@pytest.mark.django_db
def test_a_renewal_late_by_whole_periods_grants_only_the_current_one(cast):
    with time_machine.travel(JAN_31, tick=False):
        plans.plan_subscribe(lab=cast.lab, plan=carry_plan("100"), project=cast.alpha)
    with time_machine.travel(datetime(2027, 4, 15, tzinfo=UTC), tick=False):
        assert plans.plan_periods_renew() == 1
        subscription = PlanSubscription.objects.get(lab=cast.lab)
        assert subscription.period_index == 2
        assert (subscription.period_start, subscription.period_end) == (
            datetime(2027, 3, 31, 10, tzinfo=UTC), datetime(2027, 4, 30, 10, tzinfo=UTC)
        )  # fmt: skip
        assert subscription.grant.amount == D("20")  # 10 carried from the last real period
        assert Grant.objects.filter(source=GrantSource.PLAN).count() == 2


@pytest.mark.django_db
def test_an_ended_subscription_keeps_its_credits_until_the_period_ends_then_stops(cast):
    with time_machine.travel(JAN_31, tick=False):
        subscription = plans.plan_subscribe(lab=cast.lab, plan=make_plan(), project=cast.alpha)
        plans.plan_end(subscription=subscription)
        plans.plan_end(subscription=subscription)  # twice is once
        assert budget(cast.alpha) == D("10")
        assert plan_current(lab=cast.lab) is None
    with time_machine.travel(datetime(2027, 3, 1, tzinfo=UTC), tick=False):
        assert plans.plan_periods_renew() == 0
        assert grants_expire() == 1
        assert budget(cast.alpha) == 0
        assert Grant.objects.filter(source=GrantSource.PLAN).count() == 1


@pytest.mark.django_db
def test_a_new_plan_ends_the_old_one_whose_credits_stay_until_their_period_ends(cast):
    old = plans.plan_subscribe(lab=cast.lab, plan=make_plan(), project=cast.alpha)
    pro = make_plan(slug="pro", name="Pro", credits=D("100"), period=PlanPeriod.WEEKLY)
    new = plans.plan_subscribe(lab=cast.lab, plan=pro, project=cast.alpha)
    old.refresh_from_db()
    assert old.ended_at is not None and new.ended_at is None
    assert budget(cast.alpha) == D("110")
    state = plan_current(lab=cast.lab)
    assert (state.subscription, state.granted, state.left) == (new, D("100"), D("100"))


@pytest.mark.django_db
def test_refused_subscriptions_write_nothing(cast):
    plan = make_plan()
    with pytest.raises(PlanError, match="belong to the lab"):
        plans.plan_subscribe(lab=cast.lab, plan=plan, project=cast.charlie_lab.projects.first())
    plan.active = False
    plan.save()
    with pytest.raises(PlanError, match="not offered"):
        plans.plan_subscribe(lab=cast.lab, plan=plan, project=cast.alpha)
    with pytest.raises(PlanError, match="no project"):
        plans.plan_subscribe(lab=lab_create(name="Empty"), plan=make_plan(slug="other"))
    assert not PlanSubscription.objects.exists()
    assert not JournalEntry.objects.exists()


@pytest.mark.django_db
def test_without_a_project_the_credits_go_to_the_labs_default_project(cast):
    project_create(lab=cast.lab, name="Default")
    subscription = plans.plan_subscribe(lab=cast.lab, plan=make_plan())
    assert subscription.project.name == "Default"


@pytest.mark.django_db
def test_a_new_user_starts_on_the_default_plan_and_only_their_personal_lab_does():
    bare = user_create(email="first@example.com", password="pw-123456789")
    assert not PlanSubscription.objects.filter(lab__personal_for=bare).exists()
    make_plan(is_default=True)
    user = user_create(email="new@example.com", password="pw-123456789")
    lab = Lab.objects.get(personal_for=user)
    subscription = PlanSubscription.objects.get(lab=lab)
    assert subscription.project.name == "Default"
    assert budget(subscription.project) == D("10")
    team = lab_create(name="Team", owner=user)
    project_create(lab=team, name="Default")
    assert not PlanSubscription.objects.filter(lab=team).exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_renewals_grant_each_period_once():
    lab = lab_create(name="Busy lab")
    project = project_create(lab=lab, name="Default")
    with time_machine.travel(JAN_31, tick=False):
        subscriptions = [
            plans.plan_subscribe(lab=lab, plan=carry_plan("5"), project=project),
        ]
        other = lab_create(name="Other lab")
        subscriptions.append(
            plans.plan_subscribe(
                lab=other, plan=make_plan(slug="weekly", period="weekly"),
                project=project_create(lab=other, name="Default"),
            )
        )  # fmt: skip
    with time_machine.travel(datetime(2027, 3, 1, tzinfo=UTC), tick=False):
        errors = run_threads(6, lambda _: (plans.plan_periods_renew(), grants_expire()))
        assert errors == []
        for subscription in subscriptions:
            subscription.refresh_from_db()
            periods = [
                grant.metadata["period"]
                for grant in Grant.objects.filter(source_ref=str(subscription.uuid))
            ]
            assert sorted(periods) == [0, subscription.period_index]
        assert PlanSubscription.objects.get(lab=lab).grant.amount == D("15")


@pytest.mark.django_db
def test_a_renewal_of_a_period_not_yet_over_writes_nothing(cast):
    subscription = plans.plan_subscribe(lab=cast.lab, plan=make_plan(), project=cast.alpha)
    entries = JournalEntry.objects.count()
    assert plans.plan_renew(subscription_id=subscription.pk) is False
    assert plans.plan_periods_renew(now=timezone.now()) == 0
    assert JournalEntry.objects.count() == entries
    assert not JournalEntry.objects.filter(type=EntryType.EXPIRE).exists()


@pytest.fixture
def operator(db):
    return user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)


def plan_form(**data):
    form = {
        "name": "Team", "slug": "team", "description": "", "credits": "50", "period": "monthly",
        "rollover": "carry", "rollover_max": "", "category": "promotional", "priority": "10",
        "active": "on",
        "quotas-TOTAL_FORMS": "0", "quotas-INITIAL_FORMS": "0",  # the request quotas' inline
    }  # fmt: skip
    form.update(data)
    return form


@pytest.mark.django_db
def test_operator_plan_form_shows_each_mistake_on_its_field_and_writes_nothing(client, operator):
    make_plan(is_default=True)
    client.force_login(operator)
    response = client.post("/admin/billing/plan/add/", plan_form(credits="0", is_default="on"))
    errors = response.context["adminform"].form.errors
    assert errors["credits"] == ["Amount must be greater than 0"]
    assert errors["rollover_max"] == ["Carry-over needs a maximum."]
    response = client.post(
        "/admin/billing/plan/add/", plan_form(rollover="reset", rollover_max="5", is_default="on")
    )
    errors = response.context["adminform"].form.errors
    assert errors["rollover_max"] == ["Only carry-over takes a maximum; leave it empty."]
    assert errors["__all__"] == ["Another plan is already the default."]
    response = client.post("/admin/billing/plan/add/", plan_form(is_default="on", active=""))
    assert (
        "The default plan must be active."
        in response.context["adminform"].form.errors["is_default"]
    )
    assert Plan.objects.count() == 1
    response = client.post("/admin/billing/plan/add/", plan_form(rollover_max="20"))
    assert response.status_code == 302
    assert Plan.objects.get(slug="team").rollover_max == D("20")


@pytest.mark.django_db
def test_operator_puts_a_lab_on_a_plan_and_ends_it(client, operator, cast):
    plan = make_plan()
    client.force_login(operator)
    add = "/admin/billing/plansubscription/add/"
    foreign = cast.charlie_lab.projects.first()
    response = client.post(add, {"lab": cast.lab.pk, "plan": plan.pk, "project": foreign.pk})
    assert response.context["adminform"].form.errors["project"] == [
        "This project belongs to another lab."
    ]
    assert not PlanSubscription.objects.exists()
    response = client.post(add, {"lab": cast.lab.pk, "plan": plan.pk, "project": cast.beta.pk})
    assert response.status_code == 302
    subscription = PlanSubscription.objects.get(lab=cast.lab)
    assert (subscription.project, subscription.created_by, budget(cast.beta)) == (
        cast.beta, operator, D("10")
    )  # fmt: skip
    # Another plan for the same lab replaces this one (no "already on a plan" refusal).
    other = make_plan(slug="other", name="Other")
    response = client.post(add, {"lab": cast.lab.pk, "plan": other.pk, "project": ""})
    assert response.status_code == 302, response.context["adminform"].form.errors
    current = PlanSubscription.objects.get(lab=cast.lab, ended_at__isnull=True)
    assert current.plan == other
    subscription.refresh_from_db()
    assert (subscription.ended_by, subscription.ended_by_token) == (operator, None)
    assert client.get(f"/admin/billing/plan/{plan.pk}/delete/").status_code == 403
    assert client.get("/admin/billing/plan/").status_code == 200
    response = client.post(
        "/admin/billing/plansubscription/",
        {"action": "end", "_selected_action": [current.pk]},
    )
    assert response.status_code == 302
    assert not PlanSubscription.objects.filter(ended_at__isnull=True).exists()
    current.refresh_from_db()
    assert current.ended_by == operator  # who ended it, for the audit
    page = client.get(f"/admin/billing/plansubscription/{current.pk}/change/").content.decode()
    assert "Ended by" in page


@pytest.mark.django_db
def test_members_see_their_labs_plan_on_the_billing_page_and_outsiders_get_404(client, cast):
    plan = make_plan(description="Free credits to try things.")
    plans.plan_subscribe(lab=cast.lab, plan=plan, project=cast.alpha)
    spend(cast.alpha, "2.5")
    client.force_login(cast.bob)
    page = client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
    assert "Plan: Starter" in page and "Free credits to try things." in page
    assert "10 credits monthly, unused credits expire at the end of each period" in page
    assert (
        'data-testid="plan-left">10.00</strong> of 10.00 left ('
        '<span data-testid="plan-held">2.50</span> of it held for jobs in progress);'
    ) in page
    client.force_login(cast.charlie)
    assert client.get(f"/app/labs/{cast.lab.uuid}/billing/").status_code == 404
    own = client.get(f"/app/labs/{cast.charlie_lab.uuid}/billing/").content.decode()
    assert "Starter" not in own


@pytest.mark.django_db
def test_subscribing_again_to_the_plan_a_lab_is_on_grants_nothing_more(cast):
    plan = make_plan()
    first = plans.plan_subscribe(lab=cast.lab, plan=plan, project=cast.alpha)
    assert plans.plan_subscribe(lab=cast.lab, plan=plan, project=cast.alpha) == first
    assert plans.plan_subscribe(lab=cast.lab, plan=plan, project=cast.alpha) == first
    assert budget(cast.alpha) == D("10")
    moved = plans.plan_subscribe(lab=cast.lab, plan=plan, project=cast.beta)
    assert moved != first and budget(cast.beta) == D("10")  # another project: a new start


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_subscribes_to_one_plan_grant_once():
    lab = lab_create(name="Doubled form")
    project = project_create(lab=lab, name="Default")
    plan = make_plan()
    errors = run_threads(4, lambda _: plans.plan_subscribe(lab=lab, plan=plan, project=project))
    assert errors == []
    assert PlanSubscription.objects.filter(lab=lab).count() == 1
    assert budget(project) == D("10")


@pytest.mark.django_db
def test_a_subscription_that_cannot_renew_does_not_hold_up_the_others(cast, caplog, monkeypatch):
    with time_machine.travel(JAN_31, tick=False):
        broken = plans.plan_subscribe(lab=cast.lab, plan=make_plan(), project=cast.alpha)
        other = plans.plan_subscribe(
            lab=cast.charlie_lab, plan=make_plan(slug="other"),
            project=cast.charlie_lab.projects.get(),
        )  # fmt: skip
    grant = plans.budget_grant

    def failing_for_alpha(**kwargs):  # a fault in one lab's renewal, whatever it may be
        if kwargs["project"] == cast.alpha:
            raise ValueError("injected")
        return grant(**kwargs)

    monkeypatch.setattr(plans, "budget_grant", failing_for_alpha)
    with time_machine.travel(datetime(2027, 3, 1, tzinfo=UTC), tick=False):
        assert plans.plan_periods_renew() == 1
        assert "could not renew" in caplog.text
        assert PlanSubscription.objects.get(pk=other.pk).period_index == 1
        assert PlanSubscription.objects.get(pk=broken.pk).period_index == 0


@pytest.mark.django_db
def test_a_plan_grant_out_of_range_is_refused_by_the_form_and_the_database(client, operator):
    from django.db import IntegrityError, transaction

    client.force_login(operator)
    response = client.post(
        "/admin/billing/plan/add/", plan_form(credits="999999999999", rollover_max="1")
    )
    assert response.context["adminform"].form.errors["rollover_max"] == [
        "The credits and the most carried over must be below 10^12 together."
    ]
    with pytest.raises(IntegrityError), transaction.atomic():
        make_plan(rollover="carry", credits=D("999999999999"), rollover_max=D("1"))


@pytest.mark.django_db
def test_a_plans_period_is_read_only_once_a_lab_is_on_it(client, operator, cast):
    plan = make_plan()
    client.force_login(operator)
    page = client.get(f"/admin/billing/plan/{plan.pk}/change/").content.decode()
    assert 'name="period"' in page
    plans.plan_subscribe(lab=cast.lab, plan=plan, project=cast.alpha)
    page = client.get(f"/admin/billing/plan/{plan.pk}/change/").content.decode()
    assert 'name="period"' not in page and 'name="credits"' in page


@pytest.mark.django_db
def test_the_admin_refuses_to_put_a_lab_on_the_plan_it_is_on(client, operator, cast):
    plan = make_plan()
    plans.plan_subscribe(lab=cast.lab, plan=plan, project=cast.alpha)
    client.force_login(operator)
    response = client.post(
        "/admin/billing/plansubscription/add/",
        {"lab": cast.lab.pk, "plan": plan.pk, "project": cast.alpha.pk},
    )
    assert response.context["adminform"].form.errors["plan"] == ["The lab is already on this plan."]
    assert PlanSubscription.objects.count() == 1


@pytest.mark.django_db
def test_the_billing_page_says_a_period_that_ended_is_being_renewed(client, cast):
    with time_machine.travel(JAN_31, tick=False):
        plans.plan_subscribe(lab=cast.lab, plan=make_plan(), project=cast.alpha)
    with time_machine.travel(datetime(2027, 3, 1, tzinfo=UTC), tick=False):
        client.force_login(cast.alice)
        page = client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
        assert "The period ended on 28 Feb 2027, 10:00 UTC" in page
        assert 'data-testid="plan-left"' not in page
        plans.plan_periods_renew()
        page = client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
        assert "renews on <time" in page and "31 Mar 2027" in page


@pytest.mark.django_db
def test_the_public_prices_page_tells_what_new_accounts_get(client):
    assert 'data-testid="default-plan"' not in client.get("/prices/").content.decode()
    make_plan(is_default=True, rollover="carry", rollover_max=D("5"), description="Try it.")
    make_plan(slug="hidden", name="Hidden")  # operators' other plans are not advertised
    page = client.get("/prices/").content.decode()
    assert (
        "Every new account starts on the <strong>Starter</strong> plan: 10 credits monthly, "
        "unused credits carried over up to 5. Try it." in page
    )
    assert "Hidden" not in page


@pytest.mark.django_db
def test_the_periods_ending_before_the_next_sweeps_are_the_open_ones_in_the_window(cast):
    with time_machine.travel(JAN_31, tick=False):
        ending = plans.plan_subscribe(lab=cast.lab, plan=make_plan(), project=cast.alpha)
        weekly = make_plan(slug="weekly", name="Weekly", period="weekly")
        ended = plans.plan_subscribe(lab=cast.charlie_lab, plan=weekly)
        plans.plan_end(subscription=ended)
    end = ending.period_end  # 2027-02-28 10:00
    assert plans.periods_ending(now=end - timedelta(seconds=90), within=timedelta(minutes=2)) == [
        (ending.pk, end)
    ]
    assert plans.periods_ending(now=end - timedelta(minutes=3), within=timedelta(minutes=2)) == []
    assert plans.periods_ending(now=end, within=timedelta(minutes=2)) == []  # due: the sweep's


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_renews_a_period_at_its_end_not_a_sweep_later(
    cast, worker_on_the_test_database
):
    """The sweep runs a few seconds before the period ends; no sweep runs after it, yet the lab
    gets its next period's credits as the period ends."""
    from billing import tasks
    from config.celery import app

    app.conf.task_always_eager = False  # the real broker and worker (restored by _tasks_inline)
    subscription = plans.plan_subscribe(lab=cast.lab, plan=make_plan(), project=cast.alpha)
    # Move the subscription back in time, so that its first period ends four seconds from now.
    end = timezone.now().replace(microsecond=0) + timedelta(seconds=4)
    start = end - relativedelta(months=1)
    PlanSubscription.objects.filter(pk=subscription.pk).update(
        started_at=start, period_start=start, period_end=end
    )
    Grant.objects.filter(pk=subscription.grant_id).update(effective_at=start, expires_at=end)
    assert tasks.plan_periods_renew.delay().get(timeout=60) == 0  # nothing due yet
    deadline = time.monotonic() + 60
    while PlanSubscription.objects.get(pk=subscription.pk).period_index == 0:
        assert time.monotonic() < deadline, "the period was not renewed at its end"
        time.sleep(0.2)
    first_grant = subscription.grant
    subscription.refresh_from_db()
    assert (subscription.period_start, subscription.period_end) == (
        end, end + relativedelta(months=1)
    )  # fmt: skip
    assert subscription.grant.created_at >= end and subscription.grant.amount == D("10")
    first_grant.refresh_from_db()
    assert first_grant.expired_at is not None
    assert budget(cast.alpha) == D("10")  # the old period's 10 went back; the new 10 came


@pytest.mark.django_db
def test_a_trial_plan_grants_its_periods_then_ends_and_the_lab_is_on_no_plan(client, cast):
    trial = make_plan(slug="trial", name="Trial", periods=2, credits=D("5"))
    with time_machine.travel(JAN_31, tick=False):
        subscription = plans.plan_subscribe(lab=cast.lab, plan=trial, project=cast.alpha)
        assert not subscription.is_last_period
    with time_machine.travel(datetime(2027, 2, 28, 10, tzinfo=UTC), tick=False):
        assert plans.plan_periods_renew() == 1  # the second and last period
        subscription.refresh_from_db()
        assert (subscription.period_index, subscription.is_last_period) == (1, True)
        spend(cast.alpha, "2")
        client.force_login(cast.bob)
        page = client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
        assert "5 credits monthly for 2 months" in page
        assert "this is the plan's last period: it ends on" in page
        assert "31 Mar 2027, 10:00 UTC" in page
    with time_machine.travel(datetime(2027, 3, 31, 10, 0, 30, tzinfo=UTC), tick=False):
        assert plans.plan_periods_renew() == 1  # ends it
        subscription.refresh_from_db()
        assert subscription.ended_at == datetime(2027, 3, 31, 10, tzinfo=UTC)  # at its end
        assert (subscription.ended_by, subscription.ended_by_token) == (None, None)
        assert subscription.grant.expired_at is not None
        assert Grant.objects.filter(source=GrantSource.PLAN).count() == 2  # nothing more
        assert budget(cast.alpha) == 0  # 3 went back; the 2 held stay with their job
        assert plan_current(lab=cast.lab) is None
        assert plans.plan_periods_renew() == 0
        page = client.get(f"/app/labs/{cast.lab.uuid}/billing/").content.decode()
        assert 'data-testid="plan"' not in page
        # Putting the lab on the trial again is an operator's (or a platform's) choice.
        again = plans.plan_subscribe(lab=cast.lab, plan=trial)
        assert again.pk != subscription.pk and again.grant.amount == D("5")


@pytest.mark.django_db
def test_a_one_period_trial_ends_when_its_first_period_does(cast):
    with time_machine.travel(JAN_31, tick=False):
        plans.plan_subscribe(lab=cast.lab, plan=make_plan(periods=1), project=cast.alpha)
    with time_machine.travel(datetime(2027, 4, 15, tzinfo=UTC), tick=False):  # sweeps missed
        assert plans.plan_periods_renew() == 1
        subscription = PlanSubscription.objects.get(lab=cast.lab)
        assert subscription.ended_at == datetime(2027, 2, 28, 10, tzinfo=UTC)
        assert Grant.objects.filter(source=GrantSource.PLAN).count() == 1
        assert budget(cast.alpha) == 0


@pytest.mark.django_db
def test_a_plan_lasts_at_least_one_period(client, operator):
    client.force_login(operator)
    response = client.post("/admin/billing/plan/add/", plan_form(rollover="reset", periods="0"))
    errors = response.context["adminform"].form.errors
    assert errors["periods"] == ["A plan lasts at least one period; empty: it has no end."]
    assert not Plan.objects.exists()
    response = client.post("/admin/billing/plan/add/", plan_form(rollover="reset", periods="3"))
    assert response.status_code == 302
    assert Plan.objects.get().summary == (
        "50 credits monthly for 3 months, unused credits expire at the end of each period"
    )


@pytest.mark.django_db
def test_a_sweep_late_past_a_terms_end_ends_it_at_the_term_and_grants_nothing(cast):
    with time_machine.travel(JAN_31, tick=False):
        plans.plan_subscribe(lab=cast.lab, plan=make_plan(periods=3), project=cast.alpha)
    with time_machine.travel(datetime(2027, 8, 15, tzinfo=UTC), tick=False):  # in period 6
        assert plans.plan_periods_renew() == 1
        subscription = PlanSubscription.objects.get(lab=cast.lab)
        assert subscription.ended_at == datetime(2027, 4, 30, 10, tzinfo=UTC)  # period 2's end
        assert Grant.objects.filter(source=GrantSource.PLAN).count() == 1
        assert budget(cast.alpha) == 0 and plan_current(lab=cast.lab) is None


@pytest.mark.django_db
def test_a_trial_over_but_not_yet_closed_can_be_started_again(cast):
    trial = make_plan(slug="trial", name="Trial", periods=1)
    with time_machine.travel(JAN_31, tick=False):
        first = plans.plan_subscribe(lab=cast.lab, plan=trial, project=cast.alpha)
        assert plans.plan_subscribe(lab=cast.lab, plan=trial) == first  # during it: a no-op
    with time_machine.travel(datetime(2027, 2, 28, 10, 0, 0, 500000, tzinfo=UTC), tick=False):
        again = plans.plan_subscribe(lab=cast.lab, plan=trial)  # before the renewal ran
        first.refresh_from_db()
        assert again.pk != first.pk and again.grant.amount == D("10")
        assert (first.ended_at, first.ended_by) == (first.period_end, None)  # the term ended it
        assert plans.plan_periods_renew() == 0  # nothing left to close
        assert budget(cast.alpha) == D("10")  # the old grant is past its expiry; the new one
