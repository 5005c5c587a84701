"""The billing page through the cast: members see and top up, owners set auto-recharge, the
outsider sees nothing of Alice Lab's billing and can start nothing for it; bad input is a form
error that writes nothing."""

import re
from decimal import Decimal

import pytest

from billing import services, topups
from billing.models import AutoRecharge, StripeCustomer, TopUp


def billing_url(lab):
    return f"/app/labs/{lab.uuid}/billing/"


def topup_post(client, lab, **data):
    return client.post(f"/app/labs/{lab.uuid}/billing/top-up/", data)


@pytest.fixture
def history(cast):
    """One top-up of Alice Lab (pending), one of Charlie's own lab."""
    alice = topups.topup_create(lab=cast.lab, amount=Decimal("42"), actor=cast.alice)
    charlie = topups.topup_create(lab=cast.charlie_lab, amount=Decimal("17"), actor=cast.charlie)
    return alice, charlie


@pytest.mark.django_db
def test_members_see_balance_form_and_history(client, cast, offline, history):
    services.lab_top_up(lab=cast.lab, amount="12.5")
    services.budget_assign(lab=cast.lab, project=cast.alpha, amount="2.5")
    client.force_login(cast.bob)
    page = client.get(billing_url(cast.lab)).content.decode()
    assert 'data-testid="billing-balance">10.00<' in page
    assert f'data-topup="{history[0].uuid}"' in page and "42.00 USD" in page
    assert f'data-topup="{history[1].uuid}"' not in page and "17.00 USD" not in page
    assert 'data-testid="topup-form"' in page and "Test mode" in page
    assert "1 USD buys 1 credit)" in page
    assert "API keys spend their project's budget" in page
    assert "an owner or admin of the lab saves one with a top-up" in page  # Bob is a member
    assert 'data-testid="auto-recharge-form"' not in page  # members cannot set it
    for preset in ("10", "25", "50", "100"):
        assert f'value="{preset}"' in page


@pytest.mark.django_db
def test_the_outsider_sees_no_billing_of_another_lab(client, cast, offline, history):
    client.force_login(cast.charlie)
    alice_topup = history[0]
    assert client.get(billing_url(cast.lab)).status_code == 404
    receipt = f"{billing_url(cast.lab)}top-ups/{alice_topup.uuid}/receipt/"
    assert client.get(receipt).status_code == 404
    checkout = f"{billing_url(cast.lab)}top-ups/{alice_topup.uuid}/test-checkout/"
    assert client.get(checkout).status_code == 404
    assert client.post(checkout, {"outcome": "pay"}).status_code == 404
    # Through his own lab's URL, Alice's top-up is not found either.
    own = f"{billing_url(cast.charlie_lab)}top-ups/{alice_topup.uuid}/test-checkout/"
    assert client.post(own, {"outcome": "pay"}).status_code == 404
    own_page = client.get(billing_url(cast.charlie_lab)).content.decode()
    assert "17.00 USD" in own_page and "42.00 USD" not in own_page


@pytest.mark.django_db
def test_the_outsider_cannot_start_a_top_up_or_set_auto_recharge_for_another_lab(
    client, cast, offline
):
    client.force_login(cast.charlie)
    assert topup_post(client, cast.lab, preset="25").status_code == 404
    recharge = client.post(
        f"{billing_url(cast.lab)}auto-recharge/",
        {"enabled": "on", "threshold": "5", "amount": "25", "monthly_cap": "100"},
    )
    assert recharge.status_code == 404
    assert TopUp.objects.count() == 0 and AutoRecharge.objects.count() == 0


@pytest.mark.django_db
def test_a_project_of_another_lab_is_refused(client, cast, offline):
    client.force_login(cast.charlie)
    response = topup_post(client, cast.charlie_lab, preset="25", target=str(cast.alpha.uuid))
    assert response.status_code == 400
    assert "Choose this lab or one of its projects." in response.content.decode()
    assert TopUp.objects.count() == 0
    with pytest.raises(Exception, match="doesn't belong"):
        topups.topup_create(
            lab=cast.charlie_lab, amount=Decimal(25), project=cast.alpha, actor=cast.charlie
        )
    assert TopUp.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("amount", "error"),
    [
        ("4.99", "The minimum top-up is 5 USD"),
        ("10000.01", "The maximum top-up is 10,000 USD"),
        ("10,000.01", "The maximum top-up is 10,000 USD"),
        ("-20", "The minimum top-up is 5 USD"),
        ("abc", "Enter an amount such as 25 or 25.50"),
        ("12,50", "Enter an amount such as 25 or 25.50"),
        ("NaN", "Enter an amount such as 25 or 25.50"),
        ("Infinity", "Enter an amount such as 25 or 25.50"),
        ("25.001", "USD amounts have at most 2 decimal places"),
        ("1e400", "Amount is too large"),
        ("1e-400", "USD amounts have at most 2 decimal places"),
    ],
)
def test_bad_amounts_are_form_errors_and_write_nothing(client, cast, offline, amount, error):
    client.force_login(cast.alice)
    response = topup_post(client, cast.lab, amount=amount)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert TopUp.objects.count() == 0 and StripeCustomer.objects.count() == 0


@pytest.mark.django_db
def test_no_amount_at_all_or_an_unknown_preset_is_a_form_error(client, cast, offline):
    client.force_login(cast.alice)
    assert "Choose an amount or enter one." in topup_post(client, cast.lab).content.decode()
    assert topup_post(client, cast.lab, preset="7").status_code == 400
    assert TopUp.objects.count() == 0


@pytest.mark.django_db
def test_limits_come_from_settings(client, cast, offline, settings):
    settings.TOPUP_MIN_AMOUNT, settings.TOPUP_MAX_AMOUNT = Decimal(20), Decimal(30)
    client.force_login(cast.alice)
    assert topup_post(client, cast.lab, amount="19.99").status_code == 400
    assert topup_post(client, cast.lab, amount="30.01").status_code == 400
    assert topup_post(client, cast.lab, amount="30").status_code == 302
    assert TopUp.objects.get().amount_minor == 3000


@pytest.mark.django_db
def test_amounts_may_be_typed_as_pages_show_them(client, cast, offline):
    client.force_login(cast.alice)
    assert topup_post(client, cast.lab, amount="1,250.50").status_code == 302
    assert TopUp.objects.get().amount_minor == 125050
    page = client.get(billing_url(cast.lab)).content.decode()
    assert "1,250.50 USD" in page and "5 to 10,000" in page
    recharge = client.post(
        f"{billing_url(cast.lab)}auto-recharge/",
        {"enabled": "", "threshold": "1,000", "amount": "1,000", "monthly_cap": "2,000.00"},
    )
    assert recharge.status_code == 302
    setting = AutoRecharge.objects.get()
    assert (setting.threshold, setting.amount_minor, setting.monthly_cap_minor) == (
        Decimal(1000),
        100000,
        200000,
    )


@pytest.mark.django_db
def test_billing_home_goes_to_the_only_lab_or_offers_a_choice(client, cast, offline):
    client.force_login(cast.charlie)  # only his personal lab
    response = client.get("/app/billing/")
    assert response["Location"] == billing_url(cast.charlie_lab)
    client.force_login(cast.alice)  # her personal lab and Alice Lab
    page = client.get("/app/billing/").content.decode()
    assert billing_url(cast.lab) in page and "Charlie" not in page
    assert client.get("/app/billing").status_code == 301  # the path, slash appended
    dashboard = client.get("/app/").content.decode()
    assert billing_url(cast.lab) in dashboard
    assert billing_url(cast.lab) in client.get(f"/app/labs/{cast.lab.uuid}/").content.decode()


@pytest.mark.django_db
def test_anonymous_visitors_are_sent_to_sign_in(client, cast):
    response = client.get(billing_url(cast.lab))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.django_db
def test_opening_a_form_address_goes_to_the_billing_page(client, cast, offline):
    """After a form error the address bar shows the form's POST address; opening it again
    (Enter, a bookmark) lands on the billing page, and only for the lab's members."""
    client.force_login(cast.bob)
    for form in ("top-up/", "auto-recharge/"):
        response = client.get(f"{billing_url(cast.lab)}{form}")
        assert response.status_code == 302 and response["Location"] == billing_url(cast.lab)
    client.force_login(cast.charlie)
    for form in ("top-up/", "auto-recharge/"):
        assert client.get(f"{billing_url(cast.lab)}{form}").status_code == 404
    assert TopUp.objects.count() == 0 and AutoRecharge.objects.count() == 0


@pytest.mark.django_db
def test_the_billing_page_gives_each_field_an_id_of_its_own(client, cast, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_x"  # every form on the page: top-up, auto-recharge
    client.force_login(cast.alice)
    page = client.get(billing_url(cast.lab)).content.decode()
    assert 'data-testid="auto-recharge-form"' in page and 'data-testid="alert-form"' in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for label_for in re.findall(r'\bfor="([^"]+)"', page):
        assert label_for in ids
