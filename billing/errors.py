from __future__ import annotations

from decimal import Decimal

from rest_framework import status

from core.errors import ApiError, InvalidRequestError, NotFoundError


class AccountNotFoundError(NotFoundError):
    default_message = "Account not found"


class SystemAccountNotFoundError(NotFoundError):
    default_message = "System account not found"


class BudgetError(InvalidRequestError):
    """A budget operation that breaks a rule: 400 INVALID_REQUEST, as the accounting-service."""


class BudgetShortfallError(BudgetError):
    """The debited account cannot cover the move: the reference's message on the API, a plainer
    one on the lab page."""


class InsufficientFundsError(ApiError):
    """A hold (reservation) the project cannot cover: 402, with the amount asked for."""

    status_code = status.HTTP_402_PAYMENT_REQUIRED
    error_code = "INSUFFICIENT_FUNDS"
    default_message = "Insufficient funds"

    def __init__(self, message: str | None = None, *, requested_amount: Decimal) -> None:
        super().__init__(message, details={"requested_amount": str(requested_amount)})


class GrantNotExpiredError(InvalidRequestError):
    default_message = "The grant has not expired"


class PlanError(InvalidRequestError):
    """A plan change that breaks a rule (an inactive plan, a project of another lab)."""


class IdempotencyConflictError(ApiError):
    status_code = status.HTTP_409_CONFLICT
    error_code = "IDEMPOTENCY_CONFLICT"
    default_message = "This idempotency key was already used for a different request"


class PaymentProviderError(ApiError):
    """Stripe could not be reached or refused a call (billing/stripe_gateway.py)."""

    status_code = status.HTTP_502_BAD_GATEWAY
    error_code = "PAYMENT_PROVIDER_ERROR"
    default_message = "The payment provider could not complete the request; try again later"


class PaymentProviderRefusedError(PaymentProviderError):
    """Stripe refused the call for good (a bad request, wrong keys or permissions), or payments
    are not set up here: trying the same call again cannot help."""

    error_code = "PAYMENT_PROVIDER_REFUSED"
    default_message = "The payment provider refused the request"


class PaymentDeclinedError(PaymentProviderError):
    """The card or bank refused an off-session payment."""

    status_code = status.HTTP_402_PAYMENT_REQUIRED
    error_code = "PAYMENT_DECLINED"
    default_message = "The payment was declined"


class TopUpError(InvalidRequestError):
    """A top-up or auto-recharge request that breaks a rule (amount, target, state)."""


class TopUpNotFoundError(NotFoundError):
    default_message = "Top-up not found"
