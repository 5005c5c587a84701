from django.apps import AppConfig


class BillingConfig(AppConfig):
    """The ledger, credit grants and Stripe top-ups: the only app that moves money."""

    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        from billing import receivers  # noqa: F401  (connects the account-opening receivers)
