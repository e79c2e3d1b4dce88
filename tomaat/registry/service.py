"""A running registry: its store, its port, TLS, and the sweep that forgets expired announcements.

Everything is per instance, so tests can run several registries in one
process, and several processes can serve one PostgreSQL database: no state
lives here that the database does not hold.
"""

from __future__ import annotations

import logging
import time

from twisted.internet import task
from twisted.internet.defer import Deferred

from ..net import web
from ..net.daemon import Daemon
from ..protocol.registry import answer
from . import store
from .config import RegistryConfig
from .routes import RegistryRoutes

log = logging.getLogger("tomaat.registry")

DEFAULTS = RegistryConfig()  # the defaults, for help texts


def too_large_answer(limit: int) -> dict:
    return answer([f"the body is larger than {limit} bytes; an announcement is a small JSON object"])


def refusal_answer(message: str) -> dict:
    return answer([message])


class RegistryService(Daemon[RegistryConfig]):
    """`RegistryService(db=..., port=...)`; `await listen()`, `await stop()`, or `run()` to serve until interrupted."""

    log = log

    def __init__(self, config=None, *, reactor=None, clock=time.time, **options):
        self.config = RegistryConfig.build(config, options)
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.now = clock
        self.expiry = self.config.expiry
        self.max_body_bytes = self.config.max_body_bytes
        self.max_services = self.config.max_services_per_key
        self.database = store.Database(self.config.db)
        self.store: store.AsyncStore | None = None
        self.fingerprint = None
        self.port = None
        self._sweep = None

    def health(self, live: int) -> dict:
        from .. import __version__

        return {
            "status": "ok",
            "services": live,
            "store": self.database.kind,
            "expiry": self.expiry,
            "private": self.config.private,  # so a client can say a key is needed before it is refused
            "version": __version__,
        }

    async def _purge(self):
        assert self.store is not None  # the sweep runs only between listen() and stop()
        try:
            removed = await self.store.run(store.purge, self.now() - self.expiry)
        except Exception as error:
            log.warning("could not purge expired announcements: %s: %s", type(error).__name__, error)
            return
        if removed:
            log.info("forgot %d expired announcement(s)", removed)

    async def listen(self):
        """Open the store (creating its tables on first start) and the port (0 picks a free one)."""
        endpoint = self._endpoint()
        self.store = store.AsyncStore(self.config.db, self.reactor)
        try:
            try:
                await self.store.run(store.create_schema)
            except Exception as error:
                raise RuntimeError(f"cannot use the database ({self.database.describe()}): {error}") from error
            connections = web.Connections(self.config.max_connections, self.config.max_connections_per_address)
            site = web.QuietSite(
                RegistryRoutes(self).app.resource(),
                max_body_bytes=self.max_body_bytes,
                receive_timeout=self.config.receive_timeout,
                idle_timeout=self.config.idle_timeout,
                connections=connections,
                too_large=too_large_answer,
                refusal=refusal_answer,
            )
            self.port = await endpoint.listen(site)
        except Exception:
            self.store.close()
            self.store = None
            raise
        self._sweep = task.LoopingCall(lambda: Deferred.fromCoroutine(self._purge()))
        self._sweep.clock = self.reactor
        self._sweep.start(min(self.expiry, 600.0), now=False)
        return self.port

    async def stop(self):
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def advice(self) -> list[str]:
        if self.config.tls and not (self.config.cert and self.config.key):
            return [
                "TOMAAT-Slicer checks a registry's certificate against the system's certificate authorities, so it "
                "cannot discover services from this self-signed one: give --cert and --key from a CA its machines "
                "trust (docs/registry.md, 'Discovery from 3D Slicer')"
            ]
        return []

    def started_message(self) -> str:
        private = ", private: /discover and / need a registry key" if self.config.private else ""
        return f"registry serving on {self.url} (store: {self.database.describe()}, expiry {self.expiry:g} s{private})"
