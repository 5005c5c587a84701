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


class InsufficientFundsError(ApiError):
    """A hold (reservation) the project cannot cover: 402, with the amount asked for."""

    status_code = status.HTTP_402_PAYMENT_REQUIRED
    error_code = "INSUFFICIENT_FUNDS"
    default_message = "Insufficient funds"

    def __init__(self, message: str | None = None, *, requested_amount: Decimal) -> None:
        super().__init__(message, details={"requested_amount": str(requested_amount)})


class GrantNotExpiredError(InvalidRequestError):
    default_message = "The grant has not expired"


class IdempotencyConflictError(ApiError):
    status_code = status.HTTP_409_CONFLICT
    error_code = "IDEMPOTENCY_CONFLICT"
    default_message = "This idempotency key was already used for a different request"
