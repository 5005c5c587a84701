from core.errors import InvalidRequestError, NotFoundError


class MissingPriceError(NotFoundError):
    default_message = "Missing price"


class NoCurrentDiscountError(NotFoundError):
    default_message = "No current discount found for the virtual lab"


class PriceError(InvalidRequestError):
    """A price or its tiers break a rule (the reference answers these with 422)."""
