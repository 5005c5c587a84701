from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts.models import ServiceToken, User


def token_scope_required(scope: str, *, people_allowed: bool = False) -> type[BasePermission]:
    """Service tokens need `scope`. Signed-in people pass only where `people_allowed`;
    what they then see is still limited by the selectors to their own labs."""

    class TokenScopeRequired(BasePermission):
        message = f"This service token lacks the '{scope}' scope."

        def has_permission(self, request: Request, view: Any) -> bool:
            principal = request.user
            if isinstance(principal, ServiceToken):
                return principal.has_scope(scope)
            return people_allowed and isinstance(principal, User) and principal.is_active

    TokenScopeRequired.__name__ = f"TokenScopeRequired_{scope}"
    return TokenScopeRequired
