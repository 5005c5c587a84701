from rest_framework import status

from core.errors import ApiError, InvalidRequestError, NotFoundError


class KeySettingsError(InvalidRequestError):
    """Settings a key cannot have: an unknown service, a limit looser than the service's
    default, a bad period or expiry. `details` maps each field to its messages."""

    default_message = "Invalid API key settings"


class KeyNotFoundError(NotFoundError):
    default_message = "API key not found"


class KeyPermissionError(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    error_code = "FORBIDDEN"
    default_message = "Only the key's creator and the lab's owners and admins may change it"
