from django.apps import AppConfig


class MeteringConfig(AppConfig):
    """Services, tiered prices, jobs, reservations, usage and charging."""

    name = "metering"
    verbose_name = "Metering"
