from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering import selectors, services
from metering.cost import Tier
from metering.errors import MissingPriceError, PriceError
from metering.models import Discount, Price, PriceTier, Service, ServiceType
from metering.views import per_units

D = Decimal


@pytest.fixture
def llm(db):
    return Service.objects.create(
        slug="ml-llm", type=ServiceType.ONESHOT, name="LLM", unit_label="token", display_scale=1000
    )


def linear(multiplier):
    return [Tier(0, None, D(0), D(multiplier))]


def price_form(service, valid_from, tiers, valid_to=None):
    """The admin's add-price form: `tiers` as (min, max or "", fixed cost, multiplier)."""
    form = {
        "service": service.pk, "lab": "",
        "valid_from_0": valid_from.strftime("%Y-%m-%d"),
        "valid_from_1": valid_from.strftime("%H:%M:%S"),
        "valid_to_0": valid_to.strftime("%Y-%m-%d") if valid_to else "",
        "valid_to_1": valid_to.strftime("%H:%M:%S") if valid_to else "",
        "tiers-TOTAL_FORMS": str(len(tiers)), "tiers-INITIAL_FORMS": "0",
        "tiers-MIN_NUM_FORMS": "1", "tiers-MAX_NUM_FORMS": "1000",
    }  # fmt: skip
    for n, (low, high, fixed, multiplier) in enumerate(tiers):
        form |= {
            f"tiers-{n}-min_quantity": str(low), f"tiers-{n}-max_quantity": str(high),
            f"tiers-{n}-fixed_cost": fixed, f"tiers-{n}-multiplier": multiplier,
        }  # fmt: skip
    return form


def operator_signed_in(client):
    from accounts.services import user_create

    operator = user_create(email="op@example.com", password="operator-pass-1", is_superuser=True)
    client.force_login(operator)


@pytest.mark.django_db
def test_lab_price_wins_over_default_and_latest_valid_from_wins(llm, cast):
    now = timezone.now()
    old = services.price_create(
        service=llm, tiers=linear("0.1"), valid_from=now - timedelta(days=9)
    )
    new = services.price_create(
        service=llm, tiers=linear("0.2"), valid_from=now - timedelta(days=1)
    )
    services.price_create(service=llm, tiers=linear("0.3"), valid_from=now + timedelta(days=1))
    lab_only = services.price_create(
        service=llm, tiers=linear("0.05"), valid_from=now - timedelta(days=5), lab=cast.lab
    )
    assert selectors.price_current(service=llm, lab=None, at=now) == new
    assert selectors.price_current(service=llm, lab=cast.charlie_lab, at=now) == new
    assert selectors.price_current(service=llm, lab=cast.lab, at=now) == lab_only
    assert selectors.price_current(service=llm, lab=None, at=now - timedelta(days=3)) == old


@pytest.mark.django_db
def test_an_expired_price_no_longer_applies(llm):
    now = timezone.now()
    services.price_create(
        service=llm, tiers=linear("0.1"), valid_from=now - timedelta(days=2), valid_to=now
    )
    with pytest.raises(MissingPriceError, match="Missing price for: None oneshot ml-llm"):
        selectors.price_current(service=llm, lab=None, at=now)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tiers": [Tier(5, None, D(0), D(1))]}, "First tier must start at min_quantity=0"),
        ({"tiers": [Tier(0, 10, D(0), D(1)), Tier(11, None, D(0), D(1))]}, "contiguous"),
        ({"tiers": [Tier(0, None, D(0), D(1)), Tier(10, None, D(0), D(1))]}, "Only the last tier"),
        ({"valid_to_days": -1}, "valid_to must be greater than valid_from"),
    ],
)
def test_bad_prices_are_refused_and_nothing_is_written(llm, kwargs, message):
    now = timezone.now()
    valid_to = (
        now + timedelta(days=kwargs.pop("valid_to_days")) if "valid_to_days" in kwargs else None
    )
    with pytest.raises(PriceError, match=message):
        services.price_create(
            service=llm, valid_from=now, valid_to=valid_to, **({"tiers": linear("1")} | kwargs)
        )
    assert Price.objects.count() == 0


@pytest.mark.django_db
def test_legacy_services_get_no_new_price(llm):
    legacy = Service.objects.create(
        slug="ml-retrieval",
        type=ServiceType.ONESHOT,
        name="old",
        unit_label="query",
        is_legacy=True,
    )
    with pytest.raises(PriceError, match="subtype `ml-retrieval` is legacy"):
        services.price_create(service=legacy, tiers=linear("1"), valid_from=timezone.now())


@pytest.mark.django_db
def test_current_discount_is_the_latest_valid_one(cast):
    now = timezone.now()
    assert selectors.discount_rate(lab=cast.lab, at=now) == 0
    services.discount_create(lab=cast.lab, discount=D("0.2"), valid_from=now - timedelta(days=3))
    services.discount_create(lab=cast.lab, discount=D("0.1"), valid_from=now - timedelta(days=1))
    assert selectors.discount_rate(lab=cast.lab, at=now) == D("0.1")
    assert selectors.discount_rate(lab=cast.charlie_lab, at=now) == 0
    with pytest.raises(PriceError):
        services.discount_create(lab=cast.lab, discount=D("1.5"), valid_from=now)


@pytest.mark.django_db
def test_public_price_page_speaks_human_units(client, llm):
    services.price_create(
        service=llm, tiers=linear("0.00001"), valid_from=timezone.now() - timedelta(hours=1)
    )
    page = client.get("/prices/").content.decode()
    assert "0.01 credits per 1K tokens" in page
    assert "ml-llm" in page


@pytest.mark.django_db
def test_admin_refuses_non_contiguous_tiers_and_freezes_prices_in_effect(client, llm):
    operator_signed_in(client)
    form = price_form(llm, timezone.now(), [(0, 100, "0", "0.1"), (150, "", "0", "0.05")])
    refused = client.post("/admin/metering/price/add/", form)
    assert refused.status_code == 200
    assert "Tiers must be contiguous" in refused.content.decode()
    assert Price.objects.count() == 0
    form["tiers-1-min_quantity"] = "100"
    assert client.post("/admin/metering/price/add/", form).status_code == 302
    price = Price.objects.get()
    assert [t.min_quantity for t in price.tiers.all()] == [0, 100]
    # In effect now: read-only, and it cannot be deleted.
    assert (
        client.post(f"/admin/metering/price/{price.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert client.post(f"/admin/metering/price/{price.pk}/change/", form).status_code == 403
    assert "0.1" in client.get("/admin/metering/service/").content.decode()


@pytest.mark.django_db
def test_demo_services_cover_every_subtype_once(client):
    from django.core.management import call_command

    from metering.constants import SUBTYPES

    call_command("seed_demo_services")
    call_command("seed_demo_services")
    assert sorted(Service.objects.values_list("slug", flat=True)) == sorted(SUBTYPES)
    assert Price.objects.count() == len(SUBTYPES) - 2  # legacy subtypes get no price
    page = client.get("/prices/").content.decode()
    assert "0.01 credits per 1K tokens" in page
    assert "36 credits per instance-hour, plus 1.5 credits once" in page
    assert "≈ 0.023 credits per GiB-month" in page  # stored to 40 places, not exactly 0.023
    assert "0.01 credits per call<" in page  # one unit: no scale, no plural
    assert "0.36 credits per instance-hour<" in page  # every other long-running service
    assert "<strong>ML LLM</strong>" in page and "<strong>EM synapse mapping</strong>" in page
    assert "E-" not in page and "0.0000000000" not in page
    assert "ml-retrieval" not in page


@pytest.mark.django_db
def test_admin_freezes_a_price_once_a_job_used_it(client, llm, cast):
    from metering.models import Job

    operator_signed_in(client)
    price = services.price_create(
        service=llm, tiers=linear("0.1"), valid_from=timezone.now() + timedelta(days=1)
    )
    change = f"/admin/metering/price/{price.pk}/change/"
    assert 'name="_save"' in client.get(change).content.decode()  # scheduled, unused: editable
    Job.objects.create(lab=cast.lab, project=cast.alpha, service=llm, kind=llm.type, price=price)
    page = client.get(change)
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()  # view only
    assert (
        client.post(f"/admin/metering/price/{price.pk}/delete/", {"post": "yes"}).status_code == 403
    )


@pytest.mark.parametrize(
    ("multiplier", "scale", "unit", "display_unit", "text"),
    [
        ("0.00001", 1000, "token", "", "0.01 credits per 1K tokens"),
        ("0.01", 1, "unit", "", "0.01 credits per unit"),
        ("0.01", 3600, "instance-second", "", "36 credits per 3,600 instance-seconds"),
        ("0.01", 3600, "instance-second", "instance-hour", "36 credits per instance-hour"),
        ("0.0000001", 2_000_000, "bytes", "", "0.2 credits per 2M bytes"),
        ("0.0100000000000000000000", 1, "call", "", "0.01 credits per call"),
        ("0.123456789", 1, "call", "", "≈ 0.123457 credits per call"),
    ],
)
def test_rates_read_as_people_write_them(multiplier, scale, unit, display_unit, text):
    assert per_units(Decimal(multiplier), scale, unit, display_unit) == text


def test_admin_texts_drop_exponents_and_trailing_zeros(cast):
    tier = PriceTier(min_quantity=0, max_quantity=None)
    tier.fixed_cost, tier.multiplier = Decimal("0E-12"), Decimal("0.0100000000000000000000")
    assert str(tier) == "[0, ∞): 0 + 0.01/unit"
    assert str(Discount(lab=cast.lab, discount=Decimal("0.200000"))).startswith("20% off for")


@pytest.mark.django_db
def test_admin_explains_a_bad_tier_or_discount_in_words(client, llm, cast):
    operator_signed_in(client)
    later = (timezone.now() + timedelta(days=1)).replace(hour=0, minute=0, second=0)
    form = price_form(llm, later, [(0, "", "0", "-0.1")], valid_to=later)
    page = client.post("/admin/metering/price/add/", form).content.decode()
    assert "A price&#x27;s valid-to must be after its valid-from." in page
    assert "A tier&#x27;s fixed cost and multiplier cannot be negative." in page
    assert "Constraint" not in page and "_not_negative" not in page
    discount = {
        "lab": cast.lab.pk, "discount": "0.2",
        "valid_from_0": later.strftime("%Y-%m-%d"), "valid_from_1": "00:00:00",
        "valid_to_0": later.strftime("%Y-%m-%d"), "valid_to_1": "00:00:00",
    }  # fmt: skip
    page = client.post("/admin/metering/discount/add/", discount).content.decode()
    assert "A discount&#x27;s valid-to must be after its valid-from." in page
    assert Price.objects.count() == 0 and not Discount.objects.exists()


@pytest.mark.django_db
def test_admin_says_why_a_price_is_read_only_and_warns_of_a_past_start(client, llm):
    operator_signed_in(client)
    form = price_form(llm, timezone.now() - timedelta(minutes=5), [(0, "", "0", "0.1")])
    saved = client.post("/admin/metering/price/add/", form, follow=True).content.decode()
    assert "in the past: it applies to estimates and reservations from now on" in saved
    assert "usage events dated since then" in saved
    price = Price.objects.get()
    page = client.get(f"/admin/metering/price/{price.pk}/change/").content.decode()
    assert "This price&#x27;s valid-from has passed, or a job used it, so it cannot change" in page


@pytest.mark.django_db
def test_admin_journal_lists_what_each_entry_moved(client, cast):
    from billing import services as billing

    billing.lab_top_up(lab=cast.lab, amount="12.5")
    operator_signed_in(client)
    page = client.get("/admin/billing/journalentry/").content.decode()
    assert "Credits moved" in page and "12.500000" in page


@pytest.mark.django_db
def test_admin_warns_that_a_back_dated_price_is_overridden_and_keeps_it_as_it_is(client, llm):
    services.price_create(
        service=llm, tiers=linear("0.1"), valid_from=timezone.now() - timedelta(days=1)
    )
    operator_signed_in(client)
    form = price_form(llm, timezone.now() - timedelta(days=30), [(0, "", "0", "0.2")])
    saved = client.post("/admin/metering/price/add/", form, follow=True).content.decode()
    assert "This price will not apply now: the one valid from" in saved
    assert "add a price with a later valid-from" in saved
    dead = Price.objects.latest("id")
    assert selectors.price_current(service=llm, lab=None, at=timezone.now()) != dead
    # It priced the 29 days before the newer one: usage posted late for them is charged at it.
    page = client.get(f"/admin/metering/price/{dead.pk}/change/").content.decode()
    assert "so it cannot change" in page
    form = price_form(llm, timezone.now() - timedelta(minutes=1), [(0, "", "0", "0.3")])
    form |= {
        "tiers-INITIAL_FORMS": "1",
        "tiers-0-id": dead.tiers.get().pk,
        "tiers-0-price": dead.pk,
    }
    assert client.post(f"/admin/metering/price/{dead.pk}/change/", form).status_code == 403
    assert dead.tiers.get().multiplier == D("0.2")


@pytest.mark.django_db
def test_a_future_prices_change_form_that_leaves_its_tier_out_is_a_form_error(client, llm):
    operator_signed_in(client)
    later = timezone.now() + timedelta(days=2)
    price = services.price_create(service=llm, tiers=linear("0.1"), valid_from=later)
    form = price_form(llm, later, [(0, "", "0", "0.2")])  # its saved tier not sent
    response = client.post(f"/admin/metering/price/{price.pk}/change/", form)
    assert response.status_code == 200
    assert "Only the last tier can have" in response.content.decode()
    assert price.tiers.get().multiplier == D("0.1")


@pytest.mark.django_db
def test_admin_offers_no_delete_for_a_service_with_prices_and_names_the_site(client, llm):
    operator_signed_in(client)
    unpriced = Service.objects.create(slug="spare", type=ServiceType.ONESHOT, name="Spare")
    services.price_create(service=llm, tiers=linear("0.1"), valid_from=timezone.now())
    page = client.get(f"/admin/metering/service/{llm.pk}/change/").content.decode()
    assert "Meterbill operations" in page and "Django administration" not in page
    assert f"/admin/metering/service/{llm.pk}/delete/" not in page
    assert client.get(f"/admin/metering/service/{llm.pk}/delete/").status_code == 403
    assert (
        f"/admin/metering/service/{unpriced.pk}/delete/"
        in client.get(f"/admin/metering/service/{unpriced.pk}/change/").content.decode()
    )
