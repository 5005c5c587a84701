"""Every route of the project against two house rules, also the routes added after this file:

1. Bad input never gives a 500: malformed path values, queries and bodies (JSON shaped by the
   OpenAPI schema, forms as the pages render them), from every caller; a 4xx on /api/ has its
   surface's error shape.
2. The outsider sees nothing of another lab: Charlie (signed in, his lab's token, his API key)
   asking for Alice Lab's objects by their real ids is refused, changes none and sees none.

Path parameters take their values from PARAMS by name: a new name fails both tests until PARAMS
says what to put there. Alice Lab's world is built once, in a transaction rolled back after the
module; each test's own changes roll back as usual.
"""

from __future__ import annotations

import itertools
import json
import re
import traceback
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlencode

import pytest
from django.apps import apps
from django.db import transaction
from django.urls import Resolver404, URLResolver, get_resolver, resolve
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from accounts.models import OPERATOR_ONLY_SCOPES, Lab, Project, Scope
from billing import stripe_gateway, test_mode
from keys.self_api import ApiKeyAuthentication
from tests.core.world import FRESH_ID

SKIPPED = ("admin/", "accounts/", "api/schema/", "api/docs/", "static/")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
JSON, FORM = "application/json", "application/x-www-form-urlencoded"
ZERO_UUID = str(uuid.UUID(int=0))
BAD_PATH_VALUES = ("not-a-uuid", "%00", "%C0%FF", "x" * 300, ZERO_UUID, "-1", "0", "9" * 20)
QUERY_NAMES = ("page", "page_size", "limit", "offset", "project", "paid", "window", "subtype")
BAD_QUERIES = [  # every query parameter a view reads, all bad at once
    *(urlencode(dict.fromkeys((*QUERY_NAMES, "include_projects"), bad)) for bad in
      ("-1\x00", "9" * 20, "0", "\ud7ff" + "x" * 300)),
    "&".join(f"{name}=%ED%A0%80%FF" for name in QUERY_NAMES),  # not UTF-8
]  # fmt: skip
BAD_LEAVES = (None, {}, -1, 10**30, 1e308, "\x00", "x" * 300, "\ud800", "1e400")  # JSON fields
BAD_AUTHORIZATION = (
    "Bearer", "Bearer ", "Bearer \x00", "Bearer st_\x00_x", "Bearer sk_a_b_c", "Bearer st_é",
    "Bearer " + "x" * 10_000, "Basic Zm9vOmJhcg==", "Basic \x00", "Token abc",
)  # fmt: skip
BAD_FORM_VALUES = ("\x00", "1e400", "-1", "x" * 300)

# Path parameter -> its values: Alice Lab's objects where it names one (rule 2 asks for them).
PARAMS = {
    **dict.fromkeys(("lab_id", "vlab_id"), lambda w: [w.cast.lab.uuid]),
    **dict.fromkeys(("project_id", "proj_id"), lambda w: [w.cast.alpha.uuid]),
    "key_id": lambda w: [w.key.uuid],
    "job_id": lambda w: [w.job.uuid, w.longrun.uuid],
    "topup_id": lambda w: [w.paid.uuid, w.pending.uuid],
    "alert_id": lambda w: [w.alert.uuid],
    "invitation_id": lambda w: [w.invitation.uuid],
    "user_id": lambda w: [w.cast.bob.uuid],
    "answer": lambda w: ["accept", "decline"],
    "table": lambda w: ["jobs", "summary"],
    "service": lambda w: ["ml-llm", "*"],
    "year": lambda w: [timezone.now().year],
    "month": lambda w: [timezone.now().month],
}
NOT_OWNED, LAB_PARAMS = {"answer", "table", "service", "year", "month"}, {"lab_id", "vlab_id"}
# JSON body field -> a valid value (the others: from their schema), so that each bad field is
# sent in an otherwise valid body.
BODY_VALUES = {
    **dict.fromkeys(("project", "proj_id", "debited_from"), lambda w: str(w.cast.alpha.uuid)),
    **dict.fromkeys(("subtype", "service", "service_subtype"), lambda w: "ml-llm"),
    **dict.fromkeys(("job_id", "job"), lambda w: str(w.job.uuid)),
    "credited_to": lambda w: str(w.cast.beta.uuid),
    "vlab_id": lambda w: str(w.cast.lab.uuid),
    "user_id": lambda w: str(w.cast.alice.uuid),
    "key": lambda w: w.full_key,
    "services": lambda w: ["ml-llm"],
    "plan": lambda w: "free",
    "timestamp": lambda w: int(timezone.now().timestamp()),
    "id": lambda w: FRESH_ID,  # a new one in each request
    "min_quantity": lambda w: 0,
    "valid_to": lambda w: (timezone.now() + timedelta(days=2)).isoformat(),
}
# Routes with no request schema: the body their caller sends, to vary; and how it signs it.
BODY_TEMPLATES = {"billing/stripe/webhook/": lambda w: w.stripe_event}
SIGNED = {
    "billing/stripe/webhook/": lambda body: {
        "HTTP_STRIPE_SIGNATURE": test_mode.signature_header(body, stripe_gateway.webhook_secret())
    }
}
# A 4xx on /api/ has "error_code" (/api/accounting/ too: core/accounting.py), except:
ERROR_FIELD = {"/api/v1/authorize": "code"}  # one decision shape for gateways (keys/api.py)
# 200 with nothing for a lab the token cannot see, as the accounting-service answers:
EMPTY_FOR_OTHERS = {"api/accounting/discount/virtual-lab/<str:vlab_id>"}


def _walk(patterns, prefix=""):
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver) and not route.startswith(SKIPPED):
            yield from _walk(pattern.url_patterns, route)
        elif not route.startswith(SKIPPED):
            yield route, pattern.callback


ROUTES = dict(_walk(get_resolver().url_patterns))
PARAM = re.compile(r"<(?:\w+:)?(\w+)>")
SCHEMA = SchemaGenerator().get_schema(request=None, public=True)
ROOT = str(Path(__file__).resolve().parents[2]) + "/"
APP = tuple(ROOT + app for app in ("accounts", "billing", "core", "keys", "metering", "config"))
by_route = pytest.mark.parametrize("route", ROUTES, ids=lambda route: f"/{route}")


def fill(route, values) -> str:
    return "/" + PARAM.sub(lambda m: str(values[m.group(1)]), route)


def real_values(route, w) -> list[dict]:
    if "(?P<" in route:
        pytest.fail(f"/{route} is a regular expression: make it a path() to have it covered")
    names = PARAM.findall(route)
    if missing := [name for name in names if name not in PARAMS]:
        pytest.fail(f"/{route}: path parameter(s) {missing} need values: add them to PARAMS")
    options = [PARAMS[name](w) for name in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*options)]


def resolves(path, route=None) -> bool:
    """Whether the path resolves to the route (None: to any route)."""
    try:
        return route in (None, resolve(unquote(path)).route)
    except Resolver404:
        return False


def send(client, method, path, body=b"", kind=JSON, **extra):
    """(response, None), or (None, the error and the app's last frame it went through)."""
    try:
        with transaction.atomic():  # a failed request must not break the test's transaction
            return client.generic(method, path, body, kind, **extra), None
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(APP)]
        at = f" at {frames[-1].filename.removeprefix(ROOT)}:{frames[-1].lineno}" if frames else ""
        return None, f"{type(exc).__name__}: {str(exc)[:200]}{at}"


def content(response) -> str:
    raw = b"".join(response.streaming_content) if response.streaming else response.content
    return raw.decode(errors="replace")


# ---- bodies ------------------------------------------------------------------------------------


def valid_shape(schema, w, name=None):
    """A body of the schema's shape, each field valid as far as its name and type tell."""
    if "$ref" in schema:
        schema = SCHEMA["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if name in BODY_VALUES:
        return BODY_VALUES[name](w)
    if "properties" in schema:
        return {key: valid_shape(field, w, key) for key, field in schema["properties"].items()}
    if schema.get("type") == "array":
        return [valid_shape(schema.get("items", {}), w)]
    if "enum" in schema:
        return schema["enum"][0]
    tomorrow = (timezone.now() + timedelta(days=1)).isoformat()
    formats = {"uuid": str(uuid.uuid4()), "date-time": tomorrow, "decimal": "1"}
    types = {"integer": 1, "number": 1, "boolean": True, "string": "x", "object": {}}
    return formats.get(schema.get("format"), types.get(schema.get("type")))


def one_bad(body, label=""):
    """(label, body) with one field, at any depth, set to each bad value or left out."""
    for key, value in list(body.items() if isinstance(body, dict) else enumerate(body)):
        if isinstance(value, dict | list):
            for inner_label, inner in one_bad(value, f"{label}{key}."):
                yield inner_label, put(body, key, inner)
        for bad in BAD_LEAVES:
            yield f"{label}{key}={bad!r:.12}", put(body, key, bad)
        if isinstance(body, dict):
            yield f"{label}{key} left out", {k: v for k, v in body.items() if k != key}


def put(body, key, value):
    copy = dict(body) if isinstance(body, dict) else list(body)
    copy[key] = value
    return copy


def json_bodies(route, method, w):
    operation = SCHEMA["paths"].get("/" + PARAM.sub(r"{\1}", route), {}).get(method.lower(), {})
    schema = operation.get("requestBody", {}).get("content", {}).get(JSON, {}).get("schema")
    body = valid_shape(schema, w) if schema else {"name": "x", "amount": "1"}
    body = BODY_TEMPLATES[route](w) if route in BODY_TEMPLATES else body
    yield from [("empty body", b"", JSON), ("not JSON", b'{"amount": ', JSON)]
    yield from [("text/plain", b"amount=1", "text/plain"), ("a JSON list", b"[1, null]", JSON)]
    if isinstance(body, dict):
        yield "an unknown field", dumps(body | {"unknown_field": 1}), JSON
    yield "a valid-looking body", dumps(body), JSON
    yield from ((label, dumps(bad), JSON) for label, bad in one_bad(body))


def dumps(body) -> bytes:
    return json.dumps(body).replace(FRESH_ID, str(uuid.uuid4())).encode()


FORM_TAG = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.S)
SELECT_TAG = re.compile(r"<select\b([^>]*)>(.*?)</select>", re.S)
FIELD_TAG = re.compile(r"<(?:input|textarea|button)\b([^>]*)>")
ATTR = re.compile(r'([\w-]+)="([^"]*)"')
BLANKS = {"email": "x10@example.com", "datetime-local": "", "hidden": "", "radio": ""}


def page_forms(client, path):
    """The forms posting to `path` on its page and its parents' pages."""
    forms, page = [], path
    while page.count("/") > 1:
        response = send(client, "GET", page)[0] if resolves(page) else None
        for head, inner in FORM_TAG.findall(content(response) if response else ""):
            if (dict(ATTR.findall(head)).get("action") or page) == path:
                forms.append(filled_in(inner))
        page = page.rstrip("/").rsplit("/", 1)[0] + "/"
    return forms


def filled_in(form):
    """A form's fields as a person sends them: blank text "10", the first choice of a select."""
    data = {}
    for attrs, options in SELECT_TAG.findall(form):
        first = re.findall(r'value="(.+?)"', options)
        data[dict(ATTR.findall(attrs)).get("name")] = first[0] if first else ""
    for attrs in (dict(ATTR.findall(tag)) for tag in FIELD_TAG.findall(SELECT_TAG.sub("", form))):
        data.setdefault(
            attrs.get("name"), attrs.get("value") or BLANKS.get(attrs.get("type"), "10")
        )
    return {
        name: value for name, value in data.items() if name not in (None, "csrfmiddlewaretoken")
    }


def form_bodies(client, path):
    for number, data in enumerate(page_forms(client, path)):
        yield f"form {number} filled in", data
        for name, bad in itertools.product(data, BAD_FORM_VALUES):
            yield f"form {number} {name}={bad!r:.12}", data | {name: bad}


# ---- Alice Lab's world -------------------------------------------------------------------------


def bearer(secret) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def session(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


# ---- rule 1: bad input never gives a 500 -------------------------------------------------------


def callers(route, w, token_client):
    if route in SIGNED:  # the signer is its one caller
        yield "signer", APIClient()
        return
    yield "owner", session(w.cast.alice)  # every page and form of the lab is hers
    yield "member", session(w.cast.bob)
    yield "anonymous", APIClient()
    yield "global token", token_client(list(Scope.values))
    odd_replays = token_client(list(Scope.values))
    odd_replays.defaults["HTTP_IDEMPOTENCY_KEY"] = "\x00é" + "x" * 300
    yield "global token, an unusable Idempotency-Key", odd_replays
    for header in BAD_AUTHORIZATION:
        odd = APIClient()
        odd.credentials(HTTP_AUTHORIZATION=header)
        yield f"Authorization {header[:20]!r}", odd
    view = getattr(ROUTES[route], "view_class", None) or getattr(ROUTES[route], "cls", None)
    if ApiKeyAuthentication in getattr(view, "authentication_classes", []):
        yield "API key", bearer(w.full_key)


def inputs(route, method, w, client):
    """(label, path, body, content type): the real path with each bad query or body, then each
    path parameter in turn set to each bad value (one the resolver refuses is enough: they are
    all its 404)."""
    reals = real_values(route, w)
    for path in (fill(route, values) for values in reals):
        if method == "GET":
            yield "no query", path, b"", JSON
            yield from ((f"query {q[:24]}", f"{path}?{q}", b"", JSON) for q in BAD_QUERIES)
        elif route.startswith("api/") or route in SIGNED:
            yield from ((label, path, b, kind) for label, b, kind in json_bodies(route, method, w))
        else:  # a page: Django reads a POST's form, and no other body
            yield "empty body", path, b"", JSON
            if method == "POST":
                yield "not a form", path, b"\x00\xff{", "text/plain"
                for label, data in form_bodies(client, path):
                    yield label, path, urlencode(data, doseq=True).encode(), FORM
    unresolved = 0
    for name, bad in itertools.product(PARAM.findall(route), BAD_PATH_VALUES):
        path = fill(route, reals[0] | {name: bad})
        unresolved += not resolves(path, route)
        if resolves(path, route) or unresolved == 1:
            yield f"{name}={bad[:16]!r}", path, b"", JSON


def problem_of(path, response):
    status, field = response.status_code, ERROR_FIELD.get(path.split("?")[0], "error_code")
    if status >= 500:
        return f"status {status}"
    if path.startswith("/api/") and status >= 400:
        try:
            body = json.loads(content(response))
        except ValueError:
            body = None
        if not isinstance(body, dict) or field not in body:
            return f"status {status} without {field!r}: {content(response)[:100]}"
    return None


def refused(response) -> bool:
    login = response.get("Location", "").startswith("/accounts/login/")
    return response.status_code in (401, 403, 405) or login


def sweep(route, w, token_client):
    """Rule 1's requests: the problems found, and a count."""
    problems, count = [], 0
    for caller, client in callers(route, w, token_client):
        for method in METHODS:
            for number, (label, path, body, kind) in enumerate(inputs(route, method, w, client)):
                extra = SIGNED[route](body) if route in SIGNED else {}
                response, problem = send(client, method, path, body, kind, **extra)
                problem, count = problem or problem_of(path, response), count + 1
                if problem:
                    problems.append(f"{method} {path[:100]} as {caller}, {label}: {problem}")
                elif number == 0 and refused(response):
                    break  # not this method, or not this caller: whatever the input
    return problems, count


@by_route
def test_bad_input_never_gives_a_500(route, world, token_client, db):
    problems, count = sweep(route, world, token_client)
    assert not problems, f"{len(problems)} of {count} requests:\n" + "\n".join(problems)


# ---- rule 2: the outsider sees nothing of another lab ------------------------------------------


def outsider_paths(route, w):
    """(path, whether it names Alice's objects): her ids everywhere; and where a lab comes
    before another of her objects, Charlie's own lab with her object."""
    for values in real_values(route, w):
        owned = [name for name in values if name not in NOT_OWNED]
        yield fill(route, values), bool(owned)
        if (labs := LAB_PARAMS & set(values)) and set(owned) - labs:
            yield fill(route, values | dict.fromkeys(labs, w.cast.charlie_lab.uuid)), True


def alice_lab_rows(w):
    """Every row of Alice Lab and of its projects: keys, jobs, accounts, top-ups, ..."""
    rows = {}
    for model in apps.get_models():
        related = {field.name: field.related_model for field in model._meta.fields}
        if related.get("lab") is Lab:
            rows[model.__name__] = list(
                model.objects.filter(lab=w.cast.lab).order_by("pk").values()
            )
        elif related.get("project") is Project:
            rows[model.__name__] = list(
                model.objects.filter(project__lab=w.cast.lab).order_by("pk").values()
            )
    return rows


def markers(w):
    objects = [w.cast.lab, w.cast.alpha, w.cast.beta, w.key, w.job, w.longrun, w.paid, w.pending]
    uuids = [o.uuid for o in [*objects, w.alert, w.invitation]]
    texts = ["Alice Lab", "Alpha", "Beta", "alice@example.com", "dave@example.com", w.key.name]
    return [*map(str, uuids), *(u.hex for u in uuids), *texts, w.key.masked]


def her_bodies(route, w):
    """(method, body) of each write the API's schema describes, valid but for naming Alice
    Lab's objects (BODY_VALUES: her project, job, key, lab)."""
    operations = SCHEMA["paths"].get("/" + PARAM.sub(r"{\1}", route), {})
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        request = operations.get(method.lower(), {}).get("requestBody", {})
        if schema := request.get("content", {}).get(JSON, {}).get("schema"):
            yield method, dumps(valid_shape(schema, w))


@by_route
def test_the_outsider_sees_nothing_of_another_lab(route, world, token_client, db):
    w, scopes = world, [scope for scope in Scope.values if scope not in OPERATOR_ONLY_SCOPES]
    outsiders = {
        "anonymous": APIClient(),
        "charlie": session(w.cast.charlie),
        "charlie's lab token": token_client(scopes, lab=w.cast.charlie_lab),
        "charlie's API key": bearer(w.charlie_key),
    }
    query = urlencode({"project": w.cast.alpha.uuid, "paid": w.paid.uuid, "lab": w.cast.lab.uuid})
    before, seen, problems = alice_lab_rows(w), markers(w), []
    for path, owned in outsider_paths(route, w):
        # Every method where the path names her objects; elsewhere reads, with her ids in the
        # query and without; and on the API, every write with a body naming her objects.
        reads = [("GET", path, b""), ("GET", f"{path}?{query}", b"")]
        urls = [(method, path, b"") for method in METHODS] if owned else reads
        urls += [(method, path, body) for method, body in her_bodies(route, w)]
        for (caller, client), (method, url, body) in itertools.product(outsiders.items(), urls):
            response, error = send(client, method, url, body)
            if error or refused(response) or response.status_code == 404:
                problems += [f"{method} {url} as {caller}: {error}"] if error else []
                continue
            text = (content(response) + response.get("Location", "")).replace(query, "")
            shown = [marker for marker in seen if marker in text]  # (links echo the query)
            status = response.status_code
            allowed = 300 <= status < 400 or (route in EMPTY_FOR_OTHERS and status == 200)
            if status >= 500 or (owned and not allowed) or shown:
                problems.append(f"{method} {url} as {caller}: {status}, shows {shown}")
    changed = [name for name, rows in alice_lab_rows(w).items() if rows != before[name]]
    assert not changed, f"an outsider's request changed Alice Lab's {changed}"
    assert not problems, "\n".join(problems)
