"""Settings shared by every environment. Configuration comes from the environment only."""

from decimal import Decimal
from pathlib import Path

import environ

from config.schedule import beat_schedule

BASE_DIR = Path(__file__).resolve().parents[2]

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# What GET /api/accounting/version answers (the accounting-service's route); the Dockerfile
# passes the commit it was built from.
APP_VERSION = env.str("APP_VERSION", default="0.1.0")
COMMIT_SHA = env.str("COMMIT_SHA", default="")

# Peppers the HMAC-SHA256 of API keys and service tokens stored at rest (core/secrets.py).
API_KEY_PEPPER = env("API_KEY_PEPPER")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.postgres",
    "allauth",
    "allauth.account",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "core",
    "accounts",
    "billing",
    "metering",
    "keys",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "meterbill",
    }
}

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"

# django-allauth: email is the login, verified before first sign-in.
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = env.str("ACCOUNT_EMAIL_VERIFICATION", default="mandatory")
# Confirming the address in the browser that signed up signs in (allauth: same session only).
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_REDIRECT_URL = "landing"
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Meterbill] "
ACCOUNT_PREVENT_ENUMERATION = True
# Self-service labs (accounts/lab_views.py): per user, against abuse.
LABS_PER_DAY = env.int("LABS_PER_DAY", default=10)
LAB_INVITATIONS_PER_HOUR = env.int("LAB_INVITATIONS_PER_HOUR", default=30)

ACCOUNT_RATE_LIMITS = {
    # Failed logins: per IP, and per (IP, email) so one account cannot be brute-forced.
    "login_failed": "10/m/ip,5/5m/key",
    "signup": "20/m/ip",
    "reset_password": "20/m/ip,5/m/key",
    "confirm_email": "1/3m/key",
}

EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Meterbill <billing@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
ADMINS = [("Operators", email) for email in env.list("OPERATOR_EMAILS", default=[])]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ServiceTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # Decimal numbers; a lone surrogate (which no answer or column can hold) is a 400.
    "DEFAULT_PARSER_CLASSES": ["core.parsers.UnicodeJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Meterbill API",
    "DESCRIPTION": (
        "Billing and accounting for metered services. Errors share one shape: "
        '{"error_code": str, "message": str, "details": any}.'
    ),
    "VERSION": APP_VERSION,  # the same as /api/accounting/version says
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "ServiceSubtypeEnum": "metering.constants.SUBTYPES",
        "ServiceTypeEnum": "metering.models.ServiceType",
        "OneshotTypeEnum": ["oneshot"],
        "LongrunTypeEnum": ["longrun"],
        "StorageEnum": ["storage"],
    },
}

# Celery: JSON only, Redis broker, bounded tasks. Periodic tasks live in config/schedule.py.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 3600
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=240)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = beat_schedule(env)

# A reservation never used (no usage, never started) is released after this many seconds.
RESERVATION_TTL_SECONDS = env.int("RESERVATION_TTL_SECONDS", default=3600)

# Charging long-running and storage jobs (metering/usage.py), as the accounting-service does.
LONGRUN_MIN_CHARGE_INTERVAL_SECONDS = env.int("LONGRUN_MIN_CHARGE_INTERVAL_SECONDS", default=60)
LONGRUN_EXPIRY_SECONDS = env.int("LONGRUN_EXPIRY_SECONDS", default=3600)  # no heartbeat for this
STORAGE_MIN_CHARGE_INTERVAL_SECONDS = env.int("STORAGE_MIN_CHARGE_INTERVAL_SECONDS", default=3600)
# A running charge smaller than this waits for the next run (it is not lost: charges are
# computed from cumulative usage).
MIN_CHARGE_AMOUNT = Decimal(env.str("MIN_CHARGE_AMOUNT", default="0.000001"))
# Usage timestamps are accepted from this far back and this far ahead of now.
USAGE_MAX_PAST_SECONDS = env.int("USAGE_MAX_PAST_SECONDS", default=35 * 86400)
USAGE_MAX_FUTURE_SECONDS = env.int("USAGE_MAX_FUTURE_SECONDS", default=300)

# End-user API keys (keys app). After a rotation the old secret works this much longer.
API_KEY_ROTATION_GRACE_SECONDS = env.int("API_KEY_ROTATION_GRACE_SECONDS", default=86400)
# Redis down: authorize answers 503 (fail closed). True lets the per-minute limits be skipped
# instead; the credit checks (PostgreSQL) never are.
RATE_LIMITS_FAIL_OPEN = env.bool("RATE_LIMITS_FAIL_OPEN", default=False)
RATE_LIMIT_REDIS_TIMEOUT_SECONDS = env.float("RATE_LIMIT_REDIS_TIMEOUT_SECONDS", default=0.5)

# Stripe (used from the billing app only). Without keys, payments are off, or with
# STRIPE_OFFLINE_TEST_MODE the offline test-mode checkout plays Stripe's part.
STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY = env("STRIPE_PUBLISHABLE_KEY", default="")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", default="")
# Without STRIPE_SECRET_KEY, a local test-mode checkout page "pays" top-ups: credits for free,
# so only where DEBUG is on (make run) unless this says otherwise; never in production.py.
STRIPE_OFFLINE_TEST_MODE = env.bool("STRIPE_OFFLINE_TEST_MODE", default=DEBUG)
# Top-ups (billing/topups.py): amounts are in TOPUP_CURRENCY (an ISO code Stripe accepts); one
# unit of it buys CREDITS_PER_CURRENCY_UNIT credits. Presets are the form's quick amounts.
TOPUP_CURRENCY = env.str("TOPUP_CURRENCY", default="usd").lower()
TOPUP_MIN_AMOUNT = Decimal(env.str("TOPUP_MIN_AMOUNT", default="5"))
TOPUP_MAX_AMOUNT = Decimal(env.str("TOPUP_MAX_AMOUNT", default="10000"))
TOPUP_PRESET_AMOUNTS = [
    Decimal(amount)
    for amount in env.list("TOPUP_PRESET_AMOUNTS", default=["10", "25", "50", "100"])
]
CREDITS_PER_CURRENCY_UNIT = Decimal(env.str("CREDITS_PER_CURRENCY_UNIT", default="1"))
# Links in receipt mails start with this (mails are sent by workers, which have no request).
PORTAL_BASE_URL = env.str("PORTAL_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")
# Auto-recharge switches itself off after this many failed payments in a row.
AUTO_RECHARGE_MAX_FAILURES = env.int("AUTO_RECHARGE_MAX_FAILURES", default=3)
# How long a process trusts its list of labs with auto-recharge on before reading it again (the
# debit paths consult it without a query; the sweep catches what a stale list missed).
AUTO_RECHARGE_TARGETS_TTL_SECONDS = env.int("AUTO_RECHARGE_TARGETS_TTL_SECONDS", default=10)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
