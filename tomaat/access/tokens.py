"""Bearer tokens the service issues itself: for a few users or a script, where an identity provider is too much.

A token is 256 random bits behind a recognisable prefix (so a leaked one is easy to find in a repository or a
log). Only its SHA-256 is stored, in `tokens.json` in the service's state folder, next to its certificates:
256 random bits need no salt or slow hash. The file is read again when it changes, so `tomaat tokens create`
and `revoke` take effect on a running server without a restart.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time

from .identity import SCOPES, Identity

FILE_NAME = "tokens.json"
PREFIX = "tmt_"
_TOKEN = re.compile(r"tmt_[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class TokenError(ValueError):
    """A request of `tomaat tokens` that cannot be done, said in one line."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def parse_expiry(text: str, now: float | None = None) -> float:
    """`--expires`: a duration (`90d`, `12h`, `30m`) or a UTC date (`2027-06-30`), as a POSIX time."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if match:
        return now + int(match[1]) * {"d": 86400, "h": 3600, "m": 60}[match[2]]
    try:
        day = datetime.date.fromisoformat(text.strip())
    except ValueError:
        raise TokenError(
            f"--expires {text!r}: expected a duration such as 90d, 12h or 30m, or a date YYYY-MM-DD"
        ) from None
    moment = datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp()
    if moment <= now:
        raise TokenError(f"--expires {text}: that date has passed")
    return moment


class TokenStore:
    """The tokens of one service. Safe to use from several threads (the reactor checks, the CLI writes)."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, FILE_NAME)
        self._lock = threading.Lock()
        self._seen: tuple | None = None  # (mtime_ns, size) of the file last read
        self._records: list[dict] = []

    # ---- read side (the server) ----------------------------------------------------------------------------

    def _load(self) -> list[dict]:
        """The records, read again only when the file changed (one stat per request)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._records = None, []
            return self._records
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen != self._seen:
            with open(self.path, encoding="utf-8") as handle:
                records = json.load(handle)
            if not isinstance(records, list):
                raise TokenError(f"{self.path} is not a token list")
            self._seen, self._records = seen, records
        return self._records

    def live(self, now: float | None = None) -> list[dict]:
        now = time.time() if now is None else now
        with self._lock:
            records = self._load()
        return [r for r in records if not r.get("revoked") and (r.get("expires") is None or r["expires"] > now)]

    def covered(self) -> frozenset[str]:
        """The scopes some token ever issued here grants: a server whose state holds tokens requires one for
        these. Revoked and expired ones count, or revoking the last token would open the server to anyone; to
        open it again, the operator deletes the file."""
        with self._lock:
            records = self._load()
        return frozenset(scope for record in records for scope in record["scopes"])

    def identify(self, token: str) -> Identity | None:
        """The identity a token proves, or None. Every live record's hash is compared, in constant time, so the
        time taken says nothing about which token came close."""
        if not _TOKEN.fullmatch(token):
            return None
        digest = _hash(token)
        found = None
        for record in self.live():
            if hmac.compare_digest(record["hash"], digest):
                found = record
        if found is None:
            return None
        return Identity(
            name=f"token:{found['name']}",
            method="token",
            scopes=frozenset(found["scopes"]),
            owner=f"token:{found['id']}",
        )

    # ---- write side (`tomaat tokens`) -----------------------------------------------------------------------

    def _save(self, records: list[dict]) -> None:
        """Written whole to a new file and renamed over the old, readable by its owner only."""
        folder = os.path.dirname(self.path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=".tokens-", dir=folder)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(records, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            os.unlink(temporary)
            raise

    def create(self, name: str, scopes, expires: float | None = None) -> str:
        """A new token for `name`: returned once, never stored or shown again."""
        if not _NAME.fullmatch(name or ""):
            raise TokenError(
                f"token name {name[:80]!r}: expected 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
            )
        scopes = sorted(set(scopes))
        unknown = [s for s in scopes if s not in SCOPES]
        if not scopes or unknown:
            raise TokenError(f"scopes {', '.join(unknown) or 'none'}: expected one or more of {', '.join(SCOPES)}")
        token = PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            records = list(self._load())
            if any(r["name"] == name and not r.get("revoked") for r in records):
                raise TokenError(f"a token named {name!r} exists; revoke it first, or choose another name")
            records.append(
                {
                    "id": secrets.token_hex(6),
                    "name": name,
                    "hash": _hash(token),
                    "scopes": scopes,
                    "created": time.time(),
                    "expires": expires,
                    "revoked": None,
                }
            )
            self._save(records)
            self._seen = None
        return token

    def list(self) -> list[dict]:
        """What `tomaat tokens list` shows: everything but the hashes."""
        with self._lock:
            records = self._load()
        return [{k: v for k, v in r.items() if k != "hash"} for r in records]

    def revoke(self, name_or_id: str) -> dict:
        with self._lock:
            records = [dict(r) for r in self._load()]
            matches = [r for r in records if not r.get("revoked") and name_or_id in (r["name"], r["id"])]
            if not matches:
                raise TokenError(f"no live token named or with id {name_or_id[:80]!r}; see `tomaat tokens list`")
            for record in matches:
                record["revoked"] = time.time()
            self._save(records)
            self._seen = None
        return {k: v for k, v in matches[0].items() if k != "hash"}
