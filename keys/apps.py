from django.apps import AppConfig


class KeysConfig(AppConfig):
    """End-user API keys, their per-service limits, and the authorize decision."""

    name = "keys"
    verbose_name = "API keys"

    def ready(self) -> None:
        from keys import hold_function, receivers  # noqa: F401  (receivers connect themselves)
        from metering import reserve_sql

        reserve_sql.dependent_register(hold_function.functions)
