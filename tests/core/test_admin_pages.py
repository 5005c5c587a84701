"""Every admin page of the project's own models, for an operator: the list (also searched,
sorted and paged out of range), the add form and each object's change form, read and then
sent as the page's own form sends them, never a 500. Over the every-route sweep's world: a lab with keys, jobs, top-ups,
a plan with quotas, a quota reset, alerts and an invitation."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from keys.selectors import plan_quotas
from keys.services import quota_reset
from tests.core.test_every_route import content, filled_in, send

OWN_APPS = ("accounts", "billing", "metering", "keys")
ADMINS = sorted(
    (model._meta.app_label, model._meta.model_name)
    for model in admin.site._registry
    if model._meta.app_label in OWN_APPS
)
FORM = r"<form\b[^>]*id=\"\w+_form\"[^>]*>(.*?)</form>"


@pytest.fixture
def operator_client(world, db):
    operator = get_user_model().objects.create_superuser(
        email="ops@example.com", password="ops-pass-123456"
    )
    quotas = plan_quotas(lab_id=world.cast.lab.pk)  # a quota reset, for its list
    quota_reset(plan_quotas=quotas, scope="ml-llm", actor=operator, at=timezone.now())
    client = APIClient()
    client.force_login(operator)
    return client


def problems_of(client, method, url, data=None):
    kind = "application/x-www-form-urlencoded"
    if data is None:
        response, error = send(client, method, url)
    else:
        response, error = send(client, method, url, urlencode(data, doseq=True).encode(), kind)
    if error or response.status_code >= 500:
        return [f"{method} {url}: {error or response.status_code}"]
    return []


def page_and_its_form(client, url) -> list[str]:
    """The page, then its form sent back as the page's Save sends it (the values shown, blank
    fields "10", each select's first choice)."""
    response, error = send(client, "GET", url)
    if error or response.status_code >= 500:
        return [f"GET {url}: {error or response.status_code}"]
    forms = re.findall(FORM, content(response), re.S)
    return problems_of(client, "POST", url, filled_in(forms[0])) if forms else []


@pytest.mark.parametrize("app_model", ADMINS, ids=lambda app_model: ".".join(app_model))
def test_every_admin_page_renders_and_saves_without_a_500(app_model, world, operator_client):
    app, model_name = app_model
    model = next(m for m in admin.site._registry if m._meta.label_lower == f"{app}.{model_name}")
    changelist = reverse(f"admin:{app}_{model_name}_changelist")
    problems = []
    for query in ("", "?q=%00%ED%A0%80", "?o=-1.2", "?p=99999"):
        problems += problems_of(operator_client, "GET", changelist + query)
    problems += page_and_its_form(operator_client, reverse(f"admin:{app}_{model_name}_add"))
    for obj in model._default_manager.order_by("pk")[:3]:
        change = reverse(f"admin:{app}_{model_name}_change", args=[obj.pk])
        problems += page_and_its_form(operator_client, change)
    assert not problems, "\n".join(problems)
