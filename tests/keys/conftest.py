"""A priced oneshot service (`ml-llm`: 0.01 credit a unit), Alice's funded project Alpha, a
gateway's service token, and a factory of API keys for Alpha."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from accounts.models import Scope
from billing import services as billing
from keys.services import key_create, key_settings_validate
from metering.cost import Tier
from tests.metering.test_reservations import priced_service

UNIT_PRICE = Decimal("0.01")


@pytest.fixture
def llm(cast):
    service = priced_service("ml-llm", tiers=[Tier(0, None, Decimal(0), UNIT_PRICE)])
    billing.budget_grant(project=cast.alpha, amount="100")
    return service


@pytest.fixture
def gateway(token_client):
    return token_client([Scope.AUTHORIZE, Scope.USAGE])


@pytest.fixture
def make_key(cast, llm):
    """make_key(project=alpha, services=None, limits=None, credit_limit=None, ...) -> full key"""

    def make(project=None, name="gateway key", created_by=None, **settings):
        key, full = key_create(
            project=project or cast.alpha,
            name=name,
            key_settings=key_settings_validate(
                services=settings.pop("services", None),
                limits=settings.pop("limits", None),
                **settings,
            ),
            created_by=created_by or cast.alice,
        )
        return key, full

    return make


def authorize(client, key, service="ml-llm", **body):
    return client.post("/api/v1/authorize", {"key": key, "service": service, **body}, format="json")


@pytest.fixture(autouse=True)
def _rate_windows_cleared(settings):
    """The per-minute windows live in the Redis of REDIS_URL (the cache flushed between tests is
    another database): each test starts without them."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    for name in client.scan_iter(match="rl:*", count=1000):
        client.delete(name)
    client.close()


def once_of(client, url):
    """The one-use token of the form on the page at `url`, as a browser would send it back."""
    match = re.search(r'name="once" value="([^"]+)"', client.get(url).content.decode())
    assert match, f"no one-use token on {url}"
    return match.group(1)
