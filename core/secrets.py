"""Machine secrets (service tokens, API keys): generated, hashed with a pepper, compared safely."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from django.conf import settings

LOOKUP_ID_LENGTH = 12
_LOOKUP_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# An end-user API key as shown once: sk_<lookup id>_<secret> (keys.services).
API_KEY_SHAPE = re.compile(r"sk_([a-z0-9]{1,32})_([A-Za-z0-9_\-]{1,200})")


def lookup_id_generate() -> str:
    """A short public id that finds the row without revealing the secret."""
    return "".join(secrets.choice(_LOOKUP_ALPHABET) for _ in range(LOOKUP_ID_LENGTH))


def secret_generate() -> str:
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    """HMAC-SHA256 with API_KEY_PEPPER: a leaked table alone cannot be checked offline."""
    pepper = settings.API_KEY_PEPPER.encode()
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), stored_hash)
