"""The accounting-service's worked numbers (its sections 4.2 to 4.4), and the properties that
make incremental charging exact: additivity and monotonicity."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.cost import Tier, TierError, storage_cost, tiered_cost, tiers_validate, usage_cost

D = Decimal
INF = None

LINEAR = [Tier(0, INF, D(0), D("0.00001"))]
GRADUATED = [Tier(0, 1000, D(0), D("0.10")), Tier(1000, INF, D(0), D("0.05"))]
STEP = [Tier(0, 20, D(5), D(0)), Tier(20, INF, D(45), D(0))]
SETUP_FEE = [Tier(0, 100, D("2.0"), D("0.10")), Tier(100, INF, D(0), D("0.05"))]
THREE = [
    Tier(0, 100, D(0), D("0.10")),
    Tier(100, 500, D(0), D("0.05")),
    Tier(500, INF, D(0), D("0.01")),
]
LONGRUN = [Tier(0, INF, D("1.5"), D("0.01"))]


@pytest.mark.parametrize(
    ("tiers", "start", "end", "discount", "expected"),
    [
        (LINEAR, 0, 1_000_000, 0, "10"),
        (GRADUATED, 0, 1500, 0, "125"),
        (STEP, 0, 10, 0, "5"),
        (STEP, 0, 20, 0, "5"),
        (STEP, 0, 21, 0, "50"),
        (SETUP_FEE, 0, 50, 0, "7.0"),
        (SETUP_FEE, 0, 200, 0, "17.0"),
        (SETUP_FEE, 0, 60, 0, "8.0"),
        (SETUP_FEE, 60, 130, 0, "5.5"),
        (SETUP_FEE, 130, 200, 0, "3.5"),
        (LONGRUN, 0, 100, "0.2", "2.0"),
        (THREE, 80, 600, 0, "23.0"),
        (LONGRUN, 0, 2 * 3600, 0, "73.50"),
        (LONGRUN, 0, 12 * 3600, 0, "433.50"),
        (LINEAR, 0, 500_000, 0, "5.00"),
        (LINEAR, 0, 1_000_000, "0.2", "8.00"),
        ([Tier(0, INF, D("2.0"), D("0.00001"))], 0, 100_000, "0.1", "2.70"),
        ([Tier(0, INF, D("2.5"), D(0))], 0, 0, 0, "0"),  # no usage: no fixed cost
        ([Tier(0, INF, D("2.5"), D("0.1"))], 0, 1, 0, "2.6"),
        (SETUP_FEE, 200, 100, 0, "0"),  # previous above current: nothing, never negative
    ],
)
def test_reference_worked_numbers(tiers, start, end, discount, expected):
    assert usage_cost(tiers, start, end, D(discount)) == D(expected)


def test_storage_uses_the_first_multiplier_per_byte_second_without_fixed_cost():
    per_byte_second = D("0.023") / (1024**3 * 30 * 86400)
    tiers = [Tier(0, INF, D(99), per_byte_second)]
    month_of_a_gib = storage_cost(tiers, 1024**3, 30 * 86400, D(0))
    assert abs(month_of_a_gib - D("0.023")) < D("1e-20")
    half = storage_cost(tiers, 1024**3, 30 * 86400, D("0.5"))
    assert abs(half - D("0.0115")) < D("1e-20")


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ([], "At least one tier"),
        ([Tier(1, INF, D(0), D(1))], "First tier must start at min_quantity=0"),
        ([Tier(0, INF, D(0), D(1)), Tier(10, INF, D(0), D(1))], "Only the last tier"),
        ([Tier(0, 10, D(0), D(1)), Tier(20, INF, D(0), D(1))], "Tiers must be contiguous"),
        ([Tier(0, 10, D(0), D(1)), Tier(5, INF, D(0), D(1))], "Tiers must be contiguous"),
        ([Tier(0, INF, D(0), D(-1))], "cannot be negative"),
        ([Tier(0, 0, D(0), D(1)), Tier(0, INF, D(0), D(1))], "greater than its min_quantity"),
    ],
)
def test_bad_tiers_are_refused_with_the_reference_messages(tiers, message):
    with pytest.raises(TierError, match=message):
        tiers_validate(tiers)


def test_tiers_are_sorted_before_the_contiguity_check():
    ordered = tiers_validate([Tier(1000, INF, D(0), D(1)), Tier(0, 1000, D(0), D(2))])
    assert [t.min_quantity for t in ordered] == [0, 1000]


money = st.decimals(min_value=0, max_value=100, places=6, allow_nan=False, allow_infinity=False)


@st.composite
def tier_sets(draw):
    bounds = sorted(set(draw(st.lists(st.integers(1, 10_000), max_size=4))))
    starts = [0, *bounds]
    ends = [*bounds, None]
    return [Tier(lo, hi, draw(money), draw(money)) for lo, hi in zip(starts, ends, strict=True)]


quantities = st.integers(0, 20_000)


@given(tier_sets(), quantities, quantities, quantities)
def test_increments_add_up_to_the_full_cost(tiers, a, b, c):
    a, b, c = sorted([a, b, c])
    assert tiered_cost(tiers, a, b) + tiered_cost(tiers, b, c) == tiered_cost(tiers, a, c)


@given(tier_sets(), quantities, quantities)
def test_cost_never_falls_as_usage_grows_and_is_never_negative(tiers, a, b):
    low, high = sorted([a, b])
    assert tiered_cost(tiers, 0, low) <= tiered_cost(tiers, 0, high)
    assert tiered_cost(tiers, high, low) == (0 if high > low else tiered_cost(tiers, low, high))


@given(tier_sets(), quantities, st.decimals(min_value=0, max_value=1, places=4))
def test_a_discount_never_raises_the_cost(tiers, quantity, discount):
    full = usage_cost(tiers, 0, quantity, D(0))
    assert 0 <= usage_cost(tiers, 0, quantity, discount) <= full
