"""Public pages and the health endpoints."""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views import defaults
from django.views.decorators.cache import never_cache

from core.errors import error_body

logger = logging.getLogger(__name__)


def landing(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard")
    return render(request, "landing.html")


@never_cache
def health(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches nothing else on purpose."""
    return JsonResponse({"status": "ok"})


@never_cache
def accounting_health(request: HttpRequest) -> JsonResponse:
    """The accounting-service's /health: its body, raw (no envelope)."""
    return JsonResponse({"status": "OK"})


@never_cache
def accounting_version(request: HttpRequest) -> JsonResponse:
    """The accounting-service's /version, with this portal's name and version."""
    return JsonResponse(
        {
            "app_name": "meterbill",
            "app_version": settings.APP_VERSION,
            "commit_sha": settings.COMMIT_SHA or None,
        }
    )


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        logger.exception("readiness: database check failed")
        return False


def _redis_ok() -> bool:
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        logger.exception("readiness: redis check failed")
        return False


@never_cache
def ready(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when the database and Redis answer, 503 when either does not."""
    checks = {"database": _database_ok(), "redis": _redis_ok()}
    healthy = all(checks.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        "checks": {name: "ok" if ok else "down" for name, ok in checks.items()},
    }
    return JsonResponse(body, status=200 if healthy else 503)


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(error_body("ENTITY_NOT_FOUND", "Not found"), status=404)
    return render(request, "404.html", status=404)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Refused before a view ran (a body over DATA_UPLOAD_MAX_MEMORY_SIZE, a bad Host)."""
    if not _wants_json(request):
        return defaults.bad_request(request, exception)
    message = "Bad request"
    if isinstance(exception, RequestDataTooBig):
        message = f"The body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
    return JsonResponse(error_body("INVALID_REQUEST", message), status=400)


def server_error(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(error_body("INTERNAL_ERROR", "Internal server error"), status=500)
    return render(request, "500.html", status=500)
