from core.errors import InvalidRequestError, NotFoundError


class LabNotFoundError(NotFoundError):
    default_message = "Virtual lab not found"


class ProjectNotFoundError(NotFoundError):
    default_message = "Project not found"


class InvalidScopeError(InvalidRequestError):
    default_message = "Unknown scope"
