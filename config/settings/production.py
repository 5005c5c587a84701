"""Production: every secret comes from the environment; missing ones stop the start."""

from django.core.exceptions import ImproperlyConfigured

from .base import *

DEBUG = False
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
EMAIL_CONFIG = env.email_url("EMAIL_URL")
vars().update(EMAIL_CONFIG)
ACCOUNT_EMAIL_VERIFICATION = "mandatory"

if not API_KEY_PEPPER.strip() or len(API_KEY_PEPPER) < 16:
    raise ImproperlyConfigured("API_KEY_PEPPER must be at least 16 characters in production.")

# Never the offline test-mode checkout (free credits), whatever DJANGO_DEBUG or
# STRIPE_OFFLINE_TEST_MODE say: without STRIPE_SECRET_KEY, payments are off (top-ups say so).
STRIPE_OFFLINE_TEST_MODE = False
# With a key but no webhook secret, Stripe would take payments whose events we refuse.
if STRIPE_SECRET_KEY and not STRIPE_WEBHOOK_SECRET:
    raise ImproperlyConfigured("Set STRIPE_WEBHOOK_SECRET too when STRIPE_SECRET_KEY is set.")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
