"""Development on one machine (`make run`): debug on, mail to the console."""

import os

# Local-only defaults, set before base.py reads them; the real environment wins.
os.environ.setdefault("SECRET_KEY", "local-development-only-not-a-secret-" + "x" * 20)
os.environ.setdefault("API_KEY_PEPPER", "local-development-pepper")
os.environ.setdefault("DJANGO_DEBUG", "true")

from .base import *

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

# Static files come from the finders here; STATIC_ROOT (collectstatic) is for production.
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
