"""Hashing of configured PII fields before anything is written.

``data.pii_fields`` names request fields (today only ``key``, the routing key that
the predictions log records) whose values are replaced by a salted SHA-256 before
they reach a log. The salt comes from the environment variable named by
``data.pii_salt_env`` (default ``LIFELONG_PII_SALT``) and is required when any field
is configured: an unsalted hash of a user id is reversed by hashing every user id.
The same salt gives the same hash, so joins and sticky routing analyses still work
on the hashed values; rotating the salt breaks those joins on purpose.

Features are never hashed (the config refuses it): the model would be trained on
raw values and served hashes.

    >>> h = PiiHasher(["key"], salt=b"pepper")
    >>> h.hash_key("user-42") == h.hash_key("user-42"), h.hash_key("user-42")[:12]
    (True, 'sha256:d018d')
    >>> h.hash_key(None) is None, PiiHasher([], salt=b"").hash_key("user-42")
    (True, 'user-42')
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Sequence

from lifelong_ray.config import DataConfig

PREFIX = "sha256:"


class MissingSalt(RuntimeError):
    """PII fields are configured but the salt environment variable is empty."""


class PiiHasher:
    """Replaces configured PII values by ``sha256:<hex>`` of HMAC-SHA256(salt, value)."""

    def __init__(self, fields: Sequence[str], salt: bytes) -> None:
        self.fields = frozenset(fields)
        if self.fields and not salt:
            raise MissingSalt(f"PII fields {sorted(self.fields)} are configured but the salt is empty")
        self._salt = salt

    @classmethod
    def from_config(cls, data: DataConfig) -> "PiiHasher":
        """The hasher of ``data.pii_fields``, salted from ``$<data.pii_salt_env>``."""
        salt = os.environ.get(data.pii_salt_env, "").encode()
        if data.pii_fields and not salt:
            raise MissingSalt(f"data.pii_fields {data.pii_fields} is set: export {data.pii_salt_env} "
                              f"(a long random secret) before starting anything that writes logs")
        return cls(data.pii_fields, salt)

    def _hash(self, value: str) -> str:
        return PREFIX + hmac.new(self._salt, value.encode(), hashlib.sha256).hexdigest()

    def hash_key(self, key: str | None) -> str | None:
        """The routing key as it may be written (hashed when ``key`` is a PII field)."""
        if key is None or "key" not in self.fields:
            return key
        return self._hash(key)
