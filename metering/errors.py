from rest_framework import status

from core.errors import ApiError, InvalidRequestError, NotFoundError


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


class JobCancelledError(ApiError):
    """Usage for a job whose reservation was released or expired (the reference accepted it
    and charged the project in full)."""

    status_code = status.HTTP_409_CONFLICT
    error_code = "JOB_ALREADY_CANCELLED"
    default_message = "The job was cancelled: usage cannot be recorded for it"


class JobAlreadyFinishedError(ApiError):
    """Usage that contradicts what a closed job already recorded (a replay is not an error)."""

    status_code = status.HTTP_409_CONFLICT
    error_code = "JOB_ALREADY_FINISHED"
    default_message = "The job has already finished with different usage"


class UsageError(InvalidRequestError):
    """A usage event that does not fit its job (type, subtype, project, order of events)."""


class StorageOutOfOrderError(ApiError):
    status_code = status.HTTP_409_CONFLICT
    error_code = "EVENT_OUT_OF_ORDER"
    default_message = "A storage event older than the project's latest one"
