"""The test suite: real PostgreSQL and Redis (devstack/pytest_plugin.py starts them)."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-" + "t" * 40)
os.environ.setdefault("API_KEY_PEPPER", "test-pepper")

from .base import *

DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
ACCOUNT_EMAIL_VERIFICATION = "mandatory"

# The cache gets its own Redis database so tests can flush it without touching the broker.
CACHES["default"]["LOCATION"] = env("REDIS_CACHE_URL", default=REDIS_URL.rsplit("/", 1)[0] + "/1")

# Static files come from the finders here; STATIC_ROOT (collectstatic) is for production.
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
