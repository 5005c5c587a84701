"""Fixtures shared by the usage and charging tests: a frozen clock at T0, a funded
long-running service (`sim`, the reference's single-cell-sim price) and storage."""

from decimal import Decimal

import pytest
import time_machine

from billing import services as billing
from metering.cost import Tier
from metering.models import ServiceType
from tests.metering.test_reservations import priced_service
from tests.metering.test_usage import PER_BYTE_SECOND, SIM_TIERS, T0


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def sim(clock, cast):
    service = priced_service("single-cell-sim", ServiceType.LONGRUN, SIM_TIERS)
    billing.budget_grant(project=cast.alpha, amount="400")
    return service


@pytest.fixture
def storage(clock, cast):
    service = priced_service(
        "storage", ServiceType.STORAGE, [Tier(0, None, Decimal(0), PER_BYTE_SECOND)]
    )
    billing.budget_grant(project=cast.alpha, amount="400")
    return service
