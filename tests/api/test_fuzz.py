"""No request to the JSON API, however odd, is answered with a 5xx.

1. test_no_server_errors: property-based, from the API's own OpenAPI schema (schemathesis 4,
   in-process through the WSGI app). Every operation of /api/schema/ gets the examples,
   coverage and fuzzing phases' requests, valid and invalid. Each is sent with a global
   (operator) service token holding every scope and again with a lab-bound one; the end-user
   routes (`endUserKey`) with each of four API keys (plain, capped, expired, revoked).
   Generated ids are random and would only meet 404s, so id-like fields are set to ids of the
   fixture's world (the cast's labs, projects and users, keys, open jobs, priced services,
   plans, a timestamp of now), and the fuzzing phase also puts odd values in (NUL, year
   1/9999, NaN, 2^63, ...).
2. test_odd_charset_is_not_a_server_error and test_lone_surrogate_is_not_a_server_error:
   what schemathesis cannot generate (a JSON media type with a charset that is not a text
   encoding; a JSON `\\ud800` escape), for every operation with a JSON body.

Each request runs in a savepoint that is rolled back, with the Redis counters cleared, so the
examples are independent (Hypothesis needs that to shrink a failure).

Survey mode: FUZZ_REPORT=/path.jsonl runs every default schemathesis check (undocumented
status codes, response schemas, ...) and writes each failure there instead of failing.
FUZZ_MAX_EXAMPLES sets the fuzzing phase's examples per operation (default 25).
"""

from __future__ import annotations

import json
import os
import time
import traceback
import uuid
import zlib
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
import schemathesis
from django.conf import settings as django_settings
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import got_request_exception, request_finished, request_started
from django.db import close_old_connections, transaction
from django.test import Client
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup

from accounts.models import OPERATOR_ONLY_SCOPES, Project, Scope
from accounts.services import service_token_create
from billing import plans
from billing import services as billing
from billing.models import Plan
from keys.models import ApiKey, PlanQuota
from keys.services import key_create, key_revoke, key_settings_validate
from metering import services as metering
from metering.constants import SUBTYPES
from metering.cost import Tier
from metering.models import Service, ServiceType
from metering.rollups import usage_rollup

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
REPORT = os.environ.get("FUZZ_REPORT")

app = WSGIHandler()
schema = schemathesis.openapi.from_wsgi("/api/schema/", app)
schema.config.generation.update(max_examples=MAX_EXAMPLES)

# drf-spectacular's `format: decimal` strings (credits, prices), generated as decimals rather
# than as any string, so that valid amounts reach the services.
schemathesis.openapi.format(
    "decimal",
    st.decimals(min_value=Decimal("-1e13"), max_value=Decimal("1e13"), places=6).map(str)
    | st.sampled_from(
        ["0", "1", "100.00", "0.000001", "999999999999.999999", "1E+3", "1e-6", "-0"]
    ),
)

# World ------------------------------------------------------------------------------------

ONESHOT = {"ml-llm", "ml-rag", "ml-retrieval", "mcp"}

# Field names (in paths, queries and bodies, also in lists of objects) -> the WORLD pool of
# real values for them.
WORLD_FIELDS = {
    "vlab_id": "lab",
    "lab_id": "lab",
    "proj_id": "project",
    "project": "project",
    "project_id": "project",
    "debited_from": "project",
    "credited_to": "project",
    "user_id": "user",
    "group_id": "user",
    "job_id": "job",
    "job": "job",
    "key_id": "key_id",
    "key": "key",
    "service": "service",
    "subtype": "service",
    "plan": "plan",
    "timestamp": "timestamp",
    "valid_from": "moment",
    "valid_to": "moment",
    "expires_at": "moment",
    "year": "year",
    "month": "month",
}
WORLD: dict[str, list] = {}
UUID_POOLS = {"lab", "project", "user", "job", "key_id"}
INT_POOLS = {"timestamp", "year", "month"}

ODD_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\U0001f4a9",
    "x" * 256,
    "NaN",
    "-Infinity",
    "-0",
    "1e999",
    "1E-7",
    "0.0000001",
    "9" * 40,
    "\u0663",
    "2024-02-30T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "2030-01-01T00:00:00",
]
ODD_VALUES = [
    *ODD_TEXT,
    None,
    True,
    0,
    -1,
    1.5,
    2**31,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    10**30,
    [],
    {},
]
ODD_PATH = [
    "0",
    "-1",
    "null",
    "\x00",
    "00000000-0000-0000-0000-000000000000",
    "*",
    "x" * 300,
    "\u00e9",
]


def _mutated(values, odd) -> st.SearchStrategy:
    """`values` (a dict) with each id-like field mostly set to a world value, and up to two
    fields set to odd values; lists of objects (usage events) get the same, one by one."""
    if not isinstance(values, dict) or not values or not WORLD:
        return st.just(values)
    fields = {}
    for name, value in values.items():
        pool = WORLD.get(WORLD_FIELDS.get(name, ""))
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            fields[name] = st.tuples(*(_mutated(v, odd) for v in value)).map(list)
        elif pool:
            fields[name] = st.sampled_from([*pool, value])
        else:
            fields[name] = st.just(value)
    oddity = st.none() | st.tuples(st.sampled_from(sorted(values)), st.sampled_from(odd))

    def combined(parts):
        result, *oddities = parts
        for item in oddities:
            if item is not None:
                result[item[0]] = item[1]
        return result

    return st.tuples(st.fixed_dictionaries(fields), oddity, oddity).map(combined)


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    return _mutated(path_parameters, ODD_PATH)


@schema.hook
def flatmap_query(context, query):
    return _mutated(query, ODD_TEXT)


@schema.hook
def flatmap_body(context, body):
    return _mutated(body, ODD_VALUES)


def _looks_valid(pool_name, value) -> bool:
    """Whether `value` is of the kind of the pool's values: replacing it by one of them then
    does not undo a deliberately invalid value."""
    if pool_name in UUID_POOLS:
        try:
            return isinstance(value, str) and bool(uuid.UUID(value))
        except ValueError:
            return False
    if pool_name in INT_POOLS:
        return isinstance(value, int) and not isinstance(value, bool)
    if pool_name == "moment":
        try:
            return isinstance(value, str) and parse_datetime(value) is not None
        except ValueError:
            return False
    return isinstance(value, str)


def _world_ids(values):
    """`values` with its valid-looking id-like fields set to a world value picked by a hash
    (a case always gets the same one). The coverage phase's cases are made at collection,
    before the world exists, so the hooks above never see them."""
    if not isinstance(values, dict) or not WORLD:
        return values
    result = {}
    for name, value in values.items():
        pool = WORLD.get(WORLD_FIELDS.get(name, ""))
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            result[name] = [_world_ids(v) for v in value]
        elif pool and value not in pool and _looks_valid(WORLD_FIELDS[name], value):
            choices = [*pool, value]
            result[name] = choices[zlib.crc32(f"{name}={value!r}".encode()) % len(choices)]
        else:
            result[name] = value
    return result


def _priced_services(now):
    for slug in SUBTYPES:
        if slug == "storage":
            kind = ServiceType.STORAGE
        elif slug in ONESHOT:
            kind = ServiceType.ONESHOT
        else:
            kind = ServiceType.LONGRUN
        service = Service.objects.create(slug=slug, type=kind, name=slug, unit_label="unit")
        metering.price_create(
            service=service,
            tiers=[Tier(0, None, Decimal(0), Decimal("0.01"))],
            valid_from=now - timedelta(days=1),
        )


def _key(cast, name, **fields):
    return key_create(
        project=cast.alpha,
        name=name,
        key_settings=key_settings_validate(
            services=fields.pop("services", None), limits=fields.pop("limits", None), **fields
        ),
        created_by=cast.alice,
    )


def _post(client, path, body, status=201):
    response = client.post(path, body, format="json")
    assert response.status_code == status, response.content
    return response.json()


def _reserved(client, cast, kind, subtype) -> str:
    size = {"count": 10} if kind == "oneshot" else {"duration": 60, "instances": 1}
    body = {"proj_id": str(cast.alpha.uuid), "user_id": str(cast.alice.uuid), "type": kind}
    answer = _post(
        client, f"/api/accounting/reservation/{kind}", {**body, "subtype": subtype, **size}
    )
    return answer["data"]["job_id"]


@pytest.fixture
def tokens(cast):
    """An operator token with every scope, a lab-bound one (Alice's lab, every scope a lab's
    token may have), and an API key of Alpha's."""
    _, operator = service_token_create(name="fuzz operator", scopes=list(Scope.values))
    lab_scopes = [s for s in Scope.values if s not in OPERATOR_ONLY_SCOPES]
    _, lab_bound = service_token_create(name="fuzz lab", scopes=lab_scopes, lab=cast.lab)
    plain_key, plain = _key(cast, "plain")
    return {
        "serviceToken": [f"Bearer {operator}", f"Bearer {lab_bound}"],
        "endUserKey": [f"Bearer {plain}"],
        "plain_key": plain_key,
        "plain": plain,
        "lab": str(cast.lab.uuid),
    }


@pytest.fixture
def world(cast, tokens):
    """Priced services for every subtype; Alice's lab on a plan with quotas; Alpha funded,
    with open and closed jobs of every kind, usage events and rollups; three more API keys
    (capped, expired, revoked). Their ids, the tokens' and the cast's fill WORLD."""
    now = timezone.now()
    _priced_services(now)
    billing.budget_grant(project=cast.alpha, amount="1000")
    starter = Plan.objects.create(
        slug="starter", name="Starter", credits=Decimal(5), period="monthly"
    )
    Plan.objects.create(
        slug="retired", name="Retired", credits=Decimal(1), period="daily", active=False
    )
    Plan.objects.create(slug="trial", name="Trial", credits=Decimal(2), period="weekly", periods=1)
    PlanQuota.objects.create(plan=starter, service=Service.objects.get(slug="ml-llm"), requests=100)
    PlanQuota.objects.create(plan=starter, service=None, requests=1000)
    plans.plan_subscribe(lab=cast.lab, plan=starter, project=cast.alpha)

    plain_key, plain = tokens["plain_key"], tokens["plain"]
    _, capped = _key(
        cast,
        "capped",
        services=["ml-llm"],
        limits={"ml-llm": {"requests_per_minute": 5, "units_per_minute": 50}},
        credit_limit="1",
        credit_limit_period="daily",
    )
    expired_key, expired = _key(cast, "expired")
    ApiKey.objects.filter(pk=expired_key.pk).update(expires_at=now - timedelta(days=1))
    revoked_key, revoked = _key(cast, "revoked")
    key_revoke(key=revoked_key)

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=tokens["serviceToken"][0])

    jobs = [
        _reserved(client, cast, "oneshot", "ml-llm"),
        _reserved(client, cast, "longrun", "single-cell-sim"),
        _post(client, "/api/v1/authorize", {"key": plain, "service": "ml-llm"}, 200)["job_id"],
    ]
    at = int(time.time()) - 60
    usage = {"proj_id": str(cast.alpha.uuid), "timestamp": at}
    notebook = _reserved(client, cast, "longrun", "notebook")
    for kind, body in [
        (
            "oneshot",
            {
                "subtype": "ml-llm",
                "job_id": _reserved(client, cast, "oneshot", "ml-llm"),
                "count": 7,
            },
        ),
        (
            "longrun",
            {"subtype": "notebook", "job_id": notebook, "status": "started", "instances": 1},
        ),
        (
            "longrun",
            {"subtype": "notebook", "job_id": notebook, "status": "finished", "timestamp": at + 30},
        ),
        ("storage", {"subtype": "storage", "size": 1000}),
    ]:
        _post(client, f"/api/accounting/usage/{kind}", {**usage, "type": kind, **body})
    event = {"id": "e1", "project": str(cast.alpha.uuid), "service": "ml-llm", "units": 3}
    event |= {"timestamp": at, "key": f"sk_{plain_key.lookup_id}"}
    assert _post(client, "/api/v1/usage/events", {"events": [event]}, 200)["accepted"] == 1
    usage_rollup()

    WORLD.update(
        lab=[str(cast.lab.uuid), str(cast.charlie_lab.uuid)],
        project=[str(cast.alpha.uuid), str(cast.beta.uuid)]
        + [str(p.uuid) for p in Project.objects.filter(lab=cast.charlie_lab)],
        user=[str(cast.alice.uuid), str(cast.bob.uuid)],
        job=jobs,
        key_id=[str(plain_key.uuid), str(expired_key.uuid), str(revoked_key.uuid)],
        key=[plain, capped, expired, revoked, f"sk_{plain_key.lookup_id}"],
        service=["ml-llm", "single-cell-sim", "storage", "ml-rag", "*"],
        plan=["starter", "retired", "trial"],
        timestamp=[int(time.time()), int(time.time()) - 3600, str(int(time.time()))],
        moment=[(now + timedelta(days=d)).isoformat() for d in (0.01, -2, 30)],
        year=[now.year, 2000, 9998],
        month=[now.month, 1, 12],
    )
    yield {**tokens, "endUserKey": [f"Bearer {k}" for k in (plain, capped, expired, revoked)]}
    WORLD.clear()


@pytest.fixture
def server_errors():
    """As Django's test client does, keeps the request signals from closing the test's
    connection; yields the tracebacks of the exceptions views let through."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    errors: list[str] = []

    def record(sender, request=None, **kwargs):
        errors.append(traceback.format_exc())

    got_request_exception.connect(record, weak=False)
    yield errors
    got_request_exception.disconnect(record)
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def _counters_cleared():
    cache.clear()
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    for name in client.scan_iter(match="rl:*", count=1000):
        client.delete(name)
    client.close()


def _operation(path: str, method: str) -> dict:
    return schema.raw_schema["paths"][path][method.lower()]


def _credentials(credentials: dict, path: str, method: str) -> list[str]:
    schemes = {name for req in _operation(path, method).get("security", []) for name in req}
    return credentials["endUserKey" if "endUserKey" in schemes else "serviceToken"]


# 1. Schemathesis ----------------------------------------------------------------------------


@pytest.mark.django_db
@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, world, server_errors):
    case.path_parameters = _world_ids(case.path_parameters)
    case.query = _world_ids(case.query)
    if isinstance(getattr(case, "body", None), dict):
        case.body = _world_ids(case.body)
    for auth in _credentials(world, case.operation.path, case.operation.method):
        _counters_cleared()
        server_errors.clear()
        headers = {"Authorization": auth}
        with transaction.atomic():
            response = case.call(headers=headers)
            transaction.set_rollback(True)
        if REPORT:
            _survey(case, response, headers, server_errors)
            continue
        try:
            case.validate_response(response, checks=[not_a_server_error], headers=headers)
        except FailureGroup as group:
            group.add_note(f"Sent with Authorization: {auth[:10]}...")
            if server_errors:
                group.add_note("Server traceback:\n" + server_errors[-1])
            raise


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _survey(case, response, headers, server_errors):
    try:
        case.validate_response(response, headers=headers)
        return
    except FailureGroup as group:
        failures = group.exceptions
    record = {
        "operation": f"{case.operation.method.upper()} {case.operation.path}",
        "method": case.method,
        "auth": headers["Authorization"][:10],
        "failures": sorted({f"{type(f).__name__}: {f.title}" for f in failures}),
        "messages": [f.message[:600] for f in failures],
        "status": response.status_code,
        "path_parameters": _jsonable(case.path_parameters),
        "query": _jsonable(case.query),
        "body": _jsonable(getattr(case, "body", None)),
        "media_type": case.media_type,
        "response": response.text[:400],
        "traceback": server_errors[-1] if server_errors else None,
    }
    with open(REPORT, "a") as out:
        out.write(json.dumps(record, default=repr) + "\n")


# 2. What schemathesis cannot send -----------------------------------------------------------

JSON_BODY_OPERATIONS = sorted(
    (path, method.upper())
    for path, methods in schema.raw_schema["paths"].items()
    for method, operation in methods.items()
    if "application/json" in operation.get("requestBody", {}).get("content", {})
)


def _send(tokens, path, method, body: bytes, content_type="application/json"):
    """The raw body to the operation, with its first credentials (operator token or key)."""
    url = path.replace("{key_id}", str(tokens["plain_key"].uuid)).replace("{lab_id}", tokens["lab"])
    auth = _credentials(tokens, path, method)[0]
    client = Client(HTTP_AUTHORIZATION=auth, raise_request_exception=False)
    with transaction.atomic():
        response = client.generic(method, url, data=body, content_type=content_type)
        transaction.set_rollback(True)
    return response


@pytest.mark.django_db
@pytest.mark.parametrize("charset", ["base64", "zlib", "utf-16", "nonsense"])  # codecs, not text
@pytest.mark.parametrize(("path", "method"), JSON_BODY_OPERATIONS)
def test_odd_charset_is_not_a_server_error(path, method, charset, tokens, server_errors):
    response = _send(tokens, path, method, b"{}", f"application/json; charset={charset}")
    assert response.status_code < 500, server_errors[-1] if server_errors else response.content


def _request_properties(path, method) -> list[str]:
    body = _operation(path, method)["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = schema.raw_schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    return sorted(body.get("properties", {}))


SURROGATE_BODIES = [
    (path, method, body)
    for path, method in JSON_BODY_OPERATIONS
    for body in [
        '{"\\ud800": 1}',
        *(f'{{"{name}": "\\ud800"}}' for name in _request_properties(path, method)),
    ]
]


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "method", "body"), SURROGATE_BODIES)
def test_lone_surrogate_is_not_a_server_error(path, method, body, tokens, server_errors):
    response = _send(tokens, path, method, body.encode())
    assert response.status_code < 500, server_errors[-1] if server_errors else response.content
