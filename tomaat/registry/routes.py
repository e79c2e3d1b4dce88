"""The registry's HTTP routes (docs/protocol.md, "The registry: POST /announce and GET /discover").

Answers keep the v1 shape `{"status": N, "error": "..."}`, N counting the
problems, and carry a real HTTP status beside it for v2 callers. Nothing here
touches the database directly: the store runs in its own threads.

A private registry reads its list only to holders of a registry key, sent as a
Bearer token (RFC 6750) because a GET has no body to carry `api_key` in; the
key is checked exactly as an announcing one is (hashed, looked up, compared in
constant time), and a wrong one counts towards the same failure throttle.
"""

from __future__ import annotations

import logging
import math

from klein import Klein
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..net.web import json_reply
from ..protocol.registry import FILTERS, answer, discover_item, matches
from . import store
from .announcement import check_announcement, check_withdrawal, read_object
from .html import render_page, sort_services
from .keys import hash_key, looks_like_key

log = logging.getLogger("tomaat.registry")

ENDPOINTS = "POST /announce, POST /withdraw, GET /discover, GET /health and GET /"
REALM = 'Bearer realm="tomaat-registry"'


def _answer(request, problems: list[str], status: int, **extra) -> bytes:
    return json_reply(request, answer(problems, **extra), status)


def _client(request) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", "?")


class RegistryRoutes:
    app = Klein()

    def __init__(self, service):
        self.service = service

    # ---- helpers --------------------------------------------------------------------------------

    def _body(self, request):
        """The JSON object sent, or (status, message) saying why there is none."""
        limit = self.service.max_body_bytes  # larger bodies were refused with a 413 as they arrived (web.py)
        if request.content is None:
            return None, (400, "the body is empty; expected a JSON object")
        request.content.seek(0)
        try:
            return read_object(request.content.read(limit + 1)), None
        except ValueError as error:
            return None, (400, str(error))

    def _checked(self, request, check):
        """The checked body, or the answer refusing it: throttled, unreadable, or with field problems."""
        data, refused = self._body(request)
        if refused:
            return None, _answer(request, [refused[1]], refused[0])
        checked = check(data)
        if checked.problems:
            log.info(
                "%s from %s refused: %s", request.path.decode("latin-1"), _client(request), "; ".join(checked.problems)
            )
            return None, _answer(request, checked.problems, 400)
        return checked, None

    def _store_down(self, request, what: str, error: Exception) -> bytes:
        log.error("the store failed during %s: %s: %s", what, type(error).__name__, error)
        request.setHeader(b"Retry-After", b"30")
        return _answer(request, ["the registry's database is unavailable; try again later"], 503)

    async def _throttled(self, request) -> bytes | None:
        """Count one failed authentication: the 429 once its address has failed too often lately (all processes),
        the 503 when that cannot be counted, else None."""
        config = self.service.config
        try:
            wait = await self.service.store.run(
                store.failed_authentication,
                _client(request),
                self.service.now(),
                config.auth_failures,
                config.auth_window,
            )
        except Exception as error:
            return self._store_down(request, "counting a failed authentication", error)
        if wait:
            request.setHeader(b"Retry-After", str(math.ceil(wait)).encode("ascii"))
            message = (
                f"too many requests with unknown or revoked keys from this address; try again in {math.ceil(wait)} s"
            )
            return _answer(request, [message], 429)
        return None

    async def _unauthorized(self, request, url: str, what: str) -> bytes:
        """401 for an unknown or revoked key; 429 once its address has failed too often lately."""
        throttled = await self._throttled(request)
        if throttled is not None:
            return throttled
        log.warning("%s of %s from %s refused: unknown or revoked API key", what, url, _client(request))
        return _answer(request, ["unknown or revoked api_key; ask the registry's operator for a valid key"], 401)

    def _read_only(self, request, error: store.ReadOnlyKey, url: str, what: str) -> bytes:
        log.warning("%s of %s from %s refused: %s", what, url, _client(request), error)
        return _answer(request, [f"{error}; ask the registry's operator for a key that announces"], 403)

    def _challenge(self, request, message: str, error: str = "") -> bytes:
        challenge = REALM + (f', error="{error}"' if error else "")
        request.setHeader(b"WWW-Authenticate", challenge.encode("ascii"))
        return _answer(request, [message], 401)

    async def _reader_refusal(self, request, what: str) -> bytes | None:
        """None when this registry is open or the request holds a live registry key; else the answer refusing it.

        No Authorization header is a 401 that is not counted (a first visit, not a guess); a header
        without a live key is a failed authentication like an announcement's.
        """
        if not self.service.config.private:
            return None
        # the list, or the refusal to show it, is for this key's holder only: no shared cache may keep it
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Vary", b"Authorization")
        header = request.getHeader(b"authorization")
        if header is None:
            return self._challenge(
                request,
                f"this registry is private: {what} needs the header 'Authorization: Bearer KEY' with a registry key; "
                "ask the registry's operator for one",
            )
        parts = header.decode("latin-1").split(None, 1)
        token = parts[1].strip() if len(parts) == 2 and parts[0].lower() == "bearer" else ""
        usable = looks_like_key(token)
        key_id = None
        if usable:
            try:
                key_id = await self.service.store.run(store.reader, hash_key(token), self.service.now())
            except Exception as error:
                return self._store_down(request, f"checking the key for {what}", error)
        if key_id is not None:
            return None
        throttled = await self._throttled(request)
        if throttled is not None:
            return throttled
        if not usable:
            reason = "the Authorization header is not 'Bearer KEY' with a 64-hexadecimal-character registry key"
        else:
            reason = "unknown or revoked registry key; ask the registry's operator for a valid key"
        log.warning("%s from %s refused: %s", what, _client(request), reason.split(";")[0])
        return self._challenge(request, reason, "invalid_token")

    # ---- routes ---------------------------------------------------------------------------------

    @app.route("/announce", methods=["POST"])
    async def announce(self, request):
        checked, refusal = self._checked(request, check_announcement)
        if refusal:
            return refusal
        url = checked.fields["prediction_url"]
        now = self.service.now()
        try:
            sid = await self.service.store.run(
                store.announce,
                hash_key(checked.api_key),
                checked.fields,
                now,
                self.service.max_services,
                now - self.service.expiry,
            )
        except store.TooManyServices as error:
            log.warning("announcement of %s from %s refused: %s", url, _client(request), error)
            return _answer(request, [f"{error}; withdraw one first or ask the registry's operator"], 403)
        except store.ReadOnlyKey as error:
            return self._read_only(request, error, url, "announcement")
        except Exception as error:
            return self._store_down(request, "an announcement", error)
        if sid is None:
            return await self._unauthorized(request, url, "announcement")
        log.info("announced: SID %s, %s (%s)", sid, url, checked.fields["name"])
        return _answer(request, [], 200, SID=sid, expires_in=self.service.expiry)

    @app.route("/withdraw", methods=["POST"])
    async def withdraw(self, request):
        checked, refusal = self._checked(request, check_withdrawal)
        if refusal:
            return refusal
        url = checked.fields["prediction_url"]
        try:
            removed = await self.service.store.run(store.withdraw, hash_key(checked.api_key), url, self.service.now())
        except store.ReadOnlyKey as error:
            return self._read_only(request, error, url, "withdrawal")
        except Exception as error:
            return self._store_down(request, "a withdrawal", error)
        if removed is None:
            return await self._unauthorized(request, url, "withdrawal")
        if not removed:
            return _answer(request, [f"this key has no announcement of {url!r} (it may have expired)"], 404)
        log.info("withdrawn: %s", url)
        return _answer(request, [], 200)

    async def _live(self) -> list[dict]:
        return await self.service.store.run(store.live_services, self.service.now() - self.service.expiry)

    @app.route("/discover", methods=["GET"])
    async def discover(self, request):
        refusal = await self._reader_refusal(request, "GET /discover")
        if refusal is not None:
            return refusal
        wanted = {}
        for name in FILTERS:
            values = request.args.get(name.encode())
            if values and values[0].strip():
                wanted[name] = values[0].decode("utf-8", "replace").strip()
        try:
            services = await self._live()
        except Exception as error:
            return self._store_down(request, "discover", error)
        services = [s for s in services if matches(s, wanted)]
        return json_reply(request, [discover_item(s) for s in sort_services(services)])

    @app.route("/", methods=["GET"])
    async def index(self, request):
        refusal = await self._reader_refusal(request, "GET /")
        if refusal is not None:
            return refusal
        try:
            services = await self._live()
        except Exception as error:
            log.error("the store failed during the front page: %s: %s", type(error).__name__, error)
            request.setResponseCode(503)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"The registry's database is unavailable; try again later.\n"
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        # announced text is escaped; this keeps a slip from ever running a script
        request.setHeader(b"Content-Security-Policy", b"default-src 'none'; style-src 'unsafe-inline'")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return render_page(services, self.service.expiry)

    @app.route("/health", methods=["GET"])
    async def health(self, request):
        try:
            live = await self.service.store.run(store.count_live, self.service.now() - self.service.expiry)
        except Exception as error:
            log.error("health check: the store failed: %s: %s", type(error).__name__, error)
            return json_reply(request, {"status": "unavailable", "error": "the database does not answer"}, 503)
        return json_reply(request, self.service.health(live))

    @app.handle_errors(NotFound, MethodNotAllowed)
    def no_route(self, request, failure):
        where = f"{request.method.decode('latin-1')} {request.path.decode('latin-1')[:100]}"
        return _answer(request, [f"no such endpoint: {where}; the registry serves {ENDPOINTS}"], failure.value.code)
