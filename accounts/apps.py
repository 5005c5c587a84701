from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Labs, users and service tokens"

    def ready(self) -> None:
        from accounts import schema  # noqa: F401  (registers the OpenAPI auth scheme)
