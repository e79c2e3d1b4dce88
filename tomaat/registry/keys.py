"""API keys and the identifiers derived next to them.

A key is 256 random bits, so an unsalted SHA-256 is enough to store it: there
is nothing to brute-force, and a fast hash lets the store find a key by its
hash with an index. Nothing shown to anyone (key ids, SIDs) is computed from
the key, so publishing them reveals nothing about it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_HEX_CHARS = 64  # what upstream tooling issues, and what v1 servers already hold
_KEY = re.compile(r"[0-9a-fA-F]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{12}")


def generate_key() -> str:
    return secrets.token_hex(KEY_HEX_CHARS // 2)


def looks_like_key(text: str) -> bool:
    return isinstance(text, str) and _KEY.fullmatch(text) is not None


def looks_like_key_id(text: str) -> bool:
    return isinstance(text, str) and _KEY_ID.fullmatch(text) is not None


def hash_key(key: str) -> str:
    """Hex SHA-256 of the key; keys are case-insensitive hex, so upper-case copies still match."""
    return hashlib.sha256(key.lower().encode("ascii")).hexdigest()


def same_hash(stored: str, computed: str) -> bool:
    """Constant-time, so timing tells nothing about how close a guess came."""
    return hmac.compare_digest(stored.encode("ascii"), computed.encode("ascii"))


def new_key_id() -> str:
    """A public handle for a key (keys list, revoke, logs): random, unrelated to the key."""
    return secrets.token_hex(6)


def service_id(key_id: str, prediction_url: str) -> str:
    """The SID: the same for every announcement of one service, and across restarts and purges.

    Derived from the key's public id, never from the key, unlike upstream, whose SID
    was a prefix of the key itself.
    """
    digest = hashlib.sha256(f"tomaat-sid\0{key_id}\0{prediction_url}".encode()).hexdigest()
    return digest[:20]
