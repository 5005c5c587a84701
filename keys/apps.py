from django.apps import AppConfig


class KeysConfig(AppConfig):
    """End-user API keys, their per-service limits, and the authorize decision."""

    name = "keys"
    verbose_name = "API keys"
