from django.apps import AppConfig
from django.db.models.signals import post_migrate


class MeteringConfig(AppConfig):
    """Services, tiered prices, jobs, reservations, usage and charging."""

    name = "metering"
    verbose_name = "Metering"

    def ready(self) -> None:
        from metering import reserve_sql

        post_migrate.connect(reserve_sql.install, sender=self)
