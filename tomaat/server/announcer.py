"""Keeps a prediction server announced in a registry, and withdraws it on shutdown.

The registry forgets an announcement that is not renewed (3600 s by default),
so the announcer renews well inside that (every 1600 s, as upstream did). A
registry that is down or refuses must never take the server down with it: every
failure is logged (the API key never is) and retried with exponential backoff,
capped at the period. What is sent is the wire format's (protocol/registry.py),
the registry's own definition of an announcement.

Usage from a service::

    announcer = Announcer(reactor, "https://registry:8001", api_key, payload, tls=pin_fingerprint("AB:CD:..."))
    announcer.start()                # announces now, then every period
    ... announcer.announced_at ...   # for GET /announcePoint
    await announcer.stop()           # on shutdown: withdraw (bounded by stop_timeout)
"""

from __future__ import annotations

import logging
import random
from urllib.parse import urlsplit

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.python.failure import Failure

from ..net.http_client import AnswerTooLarge, HttpClient, root_cause
from ..protocol import metadata
from ..protocol import registry as wire

log = logging.getLogger("tomaat.server.announcer")

PAYLOAD_FIELDS = wire.ANNOUNCED  # required; the model metadata (protocol/metadata.py) is sent when given


def registry_base(url: str) -> str:
    """The registry's base URL, whether given as https://host:8001 or as its .../announce endpoint."""
    url = url.strip().rstrip("/")
    if url.endswith("/announce"):
        url = url[: -len("/announce")]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"registry URL {url!r} is not an http(s) URL with a host, e.g. https://registry:8001")
    return url


def backoff_delay(failures: int, first: float, cap: float) -> float:
    """Seconds before retry number `failures` (1, 2, ...): doubling from `first`, never past `cap`.

    The jitter (up to a fifth off) keeps servers restarted together by one outage
    from hammering the registry in step when it comes back.
    """
    delay = min(cap, first * 2 ** max(0, failures - 1))
    return delay * random.uniform(0.8, 1.0)


def describe_error(error: BaseException, timeout: float) -> str:
    """One readable line for a failed exchange."""
    error = root_cause(error)
    if isinstance(error, defer.TimeoutError | defer.CancelledError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, AnswerTooLarge):
        return str(error)
    if isinstance(error, SSL.Error):
        return "the TLS handshake failed: the registry's certificate is not the trusted one (check the pinned fingerprint or CA)"
    return f"{type(error).__name__}: {error}"


# ---- the announcer -------------------------------------------------------------------------------


class Announcer:
    """Announce `payload` to the registry now and every `period` seconds, until `await stop()`.

    `tls` is an IPolicyForHTTPS for an https registry (`pin_fingerprint(...)`,
    `trust_certificate(...)`, or None for the system's CAs). `announced_at` is
    the registry's URL while the registry's last answer was an acceptance, and
    "" otherwise: what GET /announcePoint reports.
    """

    def __init__(
        self,
        reactor,
        registry_url: str,
        api_key: str,
        payload: dict,
        period: float = 1600.0,
        tls=None,
        *,
        request_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        first_retry: float = 5.0,
    ):
        missing = [name for name in PAYLOAD_FIELDS if name not in payload]
        if missing:
            raise ValueError(f"the announcement payload lacks {', '.join(missing)}")
        if not api_key.strip():
            raise ValueError("the API key is empty; ask the registry's operator for one")
        if period <= 0:
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        self.reactor = reactor
        self.registry_url = registry_base(registry_url)
        self._api_key = api_key.strip()
        self.payload = {name: payload[name] for name in (*PAYLOAD_FIELDS, *metadata.FIELDS) if name in payload}
        self.period = float(period)
        self.request_timeout = request_timeout
        self.stop_timeout = stop_timeout
        self.first_retry = min(first_retry, self.period)
        self._http = HttpClient(reactor, tls, connect_timeout=request_timeout)
        self.announced_at = ""
        self.sid = None
        self.failures = 0  # consecutive failed attempts, for health reporting
        self.announcements = 0  # accepted ones, since start
        self._timer: DelayedCall | None = None
        self._in_flight: defer.Deferred | None = None
        self._running = False

    def __repr__(self) -> str:  # never the key, even in a debugger or a log of the object
        return f"<Announcer {self.payload['prediction_url']} -> {self.registry_url}>"

    # ---- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._attempt()

    def _attempt(self) -> None:
        self._timer = None
        if not self._running:
            return
        attempt = self._in_flight = defer.Deferred.fromCoroutine(self._announce_once())
        attempt.addBoth(self._schedule)

    def _schedule(self, refusal) -> None:
        """Plan the next attempt: a period after an acceptance, a growing backoff after a failure."""
        self._in_flight = None
        if isinstance(refusal, Failure):  # a bug of ours; the loop goes on all the same
            refusal = f"unexpected {type(refusal.value).__name__}: {refusal.getErrorMessage()}"
        if not self._running:
            return
        if refusal is None:
            delay = self.period
        else:
            self.failures += 1
            delay = backoff_delay(self.failures, self.first_retry, self.period)
            log.warning(
                "announcing %s to %s failed (%d in a row): %s; next attempt in %.3g s",
                self.payload["prediction_url"],
                self.registry_url,
                self.failures,
                self._scrub(refusal),
                delay,
            )
        self._timer = self.reactor.callLater(delay, self._attempt)

    def _scrub(self, text: str) -> str:
        """The registry's own words, shortened, with the key cut out should a foreign registry echo it."""
        text = str(text)[:500]
        return text.replace(self._api_key, "<api key>") if self._api_key else text

    async def _post(self, endpoint: str, body: dict, timeout: float):
        """(HTTP status, the answer as a dict); the timeout covers connecting, sending and reading the answer."""
        url = f"{self.registry_url}/{endpoint}"
        code, raw = await self._http.post_json(url, body, timeout=timeout, limit=wire.ANSWER_LIMIT)
        return code, wire.read_answer(raw)

    async def _announce_once(self) -> str | None:
        """None when the registry accepted, else why not; never raises."""
        try:
            code, answer = await self._post(
                "announce", wire.announce_body(self._api_key, self.payload), self.request_timeout
            )
        except Exception as error:
            return f"could not reach the registry: {describe_error(error, self.request_timeout)}"
        if not wire.accepted(code, answer):
            self.announced_at = ""
            return f"the registry refused (HTTP {code}): {answer.get('error', '')}"
        first = not self.announced_at
        self.failures = 0
        self.announcements += 1
        self.sid = answer.get("SID", self.sid)
        self.announced_at = self.registry_url
        expires = answer.get("expires_in")
        if first and isinstance(expires, int | float) and expires <= self.period:
            log.warning(
                "the registry forgets announcements after %g s, but they are renewed only every %g s: "
                "the service will be missing from /discover between renewals",
                expires,
                self.period,
            )
        (log.info if first else log.debug)(
            "announced %s to %s (SID %s)", self.payload["prediction_url"], self.registry_url, self.sid
        )
        return None

    # ---- shutting down -------------------------------------------------------------------------

    async def stop(self) -> bool:
        """Stop renewing and withdraw the announcement; True when the registry confirmed. Never raises."""
        if not self._running:
            return False
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._in_flight is not None:
            # let a pending announcement land first, so it cannot arrive after the withdrawal
            pending = self._in_flight
            pending.addTimeout(self.stop_timeout, self.reactor)
            try:
                await pending
            except Exception:
                pass
        was_announced, self.announced_at = self.announced_at, ""
        body = wire.withdraw_body(self._api_key, self.payload["prediction_url"])
        try:
            code, answer = await self._post("withdraw", body, self.stop_timeout)
        except Exception as error:
            log.warning(
                "could not withdraw %s from the registry at %s: %s (it expires there on its own)",
                self.payload["prediction_url"],
                self.registry_url,
                self._scrub(describe_error(error, self.stop_timeout)),
            )
            return False
        if code == 200:
            log.info("withdrew %s from %s", self.payload["prediction_url"], self.registry_url)
            return True
        (log.warning if was_announced else log.info)(
            "the registry at %s did not withdraw %s (HTTP %d): %s",
            self.registry_url,
            self.payload["prediction_url"],
            code,
            self._scrub(answer.get("error", "")),
        )
        return False
