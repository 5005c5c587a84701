from core.errors import InvalidRequestError, NotFoundError


class MissingPriceError(NotFoundError):
    default_message = "Missing price"


class NoCurrentDiscountError(NotFoundError):
    default_message = "No current discount found for the virtual lab"


class PriceError(InvalidRequestError):
    """A price or its tiers break a rule (the reference answers these with 422)."""


class JobNotFoundError(NotFoundError):
    default_message = "The specified job cannot be found"


class JobAlreadyStartedError(InvalidRequestError):
    error_code = "JOB_ALREADY_STARTED"
    default_message = "The reservation cannot be released because already started"


class JobAlreadyCancelledError(InvalidRequestError):
    error_code = "JOB_ALREADY_CANCELLED"
    default_message = "The reservation cannot be released because already cancelled"
