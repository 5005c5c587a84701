"""Production settings with bench/floor_urls.py's endpoints added: for `make bench-floor` only,
never deployed."""

from config.settings.production import *  # noqa: F403

ROOT_URLCONF = "bench.floor_urls"
