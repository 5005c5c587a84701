from core.errors import InvalidRequestError, NotFoundError


class LabNotFoundError(NotFoundError):
    default_message = "Virtual lab not found"


class ProjectNotFoundError(NotFoundError):
    default_message = "Project not found"


class InvalidScopeError(InvalidRequestError):
    default_message = "Unknown scope"


class MembershipError(InvalidRequestError):
    """A membership change the lab's rules refuse (the last owner, an admin touching an owner)."""


class InvitationNotFoundError(NotFoundError):
    default_message = "Invitation not found"


class InvitationStaleError(MembershipError):
    """An invitation whose sender may no longer grant its role: closed, not accepted."""
