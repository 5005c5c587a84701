from django.apps import AppConfig
from django.db.models.signals import post_migrate


class KeysConfig(AppConfig):
    """End-user API keys, their per-service limits, and the authorize decision."""

    name = "keys"
    verbose_name = "API keys"

    def ready(self) -> None:
        from keys import hold_function

        post_migrate.connect(hold_function.install, sender=self)
