"""Start-up, logging and shutdown of a listening service: the same for the prediction server and the registry.

Each service says only how it listens, how it stops and what it logs once
it is up; opening the endpoint (TLS or not), the URL a local process uses,
and turning a failed start into exit status 1 live here once.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Generic, TypeVar, cast

from twisted.internet.defer import Deferred

from ..config import ListenConfig


def log_to_stdlib() -> None:
    """Send Twisted's log events to the standard logging module, configured once for the process."""
    from twisted.logger import ILogObserver, STDLibLogObserver, globalLogBeginner

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # STDLibLogObserver is @implementer(ILogObserver), which mypy cannot see without a zope plugin
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, STDLibLogObserver())], redirectStandardIO=False)


def return_large_buffers(threshold: int = 1 << 20) -> bool:
    """A serving process gives buffers of a MiB or more back to the system as soon as they are freed.

    glibc otherwise keeps freed memory in its heap (its mmap threshold grows with the largest block freed), so
    a server's peak memory after a few large requests holds yesterday's buffers besides today's: measured with
    benchmarks/memory.py, one 256^3 request grew it by 1.72x the volume instead of the 1.5x it holds alive.
    Only in a process of ours (`run`), never on import: a library should not set its host's allocator. Returns
    whether the C library took the settings (not glibc: nothing happens)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, threshold)) and bool(mallopt(m_trim_threshold, threshold))


def server_endpoint(reactor, config: ListenConfig):
    """The endpoint a service listens on, and its certificate's fingerprint (None for plain HTTP).

    An IPv6 listen_address gets an IPv6 socket (tcp.Port decides, as for Twisted's own endpoints). With
    `client_ca` (a PEM file of CAs) TLS asks clients for a certificate those CAs signed; one without a
    certificate still connects (see tls.pem_options).
    """
    from . import tls
    from .bulk_tls import TLSServerEndpoint
    from .in_place import TCPServerEndpoint

    port, interface = config.port, config.listen_address
    tcp = TCPServerEndpoint(reactor, port, interface=interface)  # reads bodies in place (in_place.py)
    if not config.tls:
        return tcp, None
    cert, key = config.cert, config.key
    if not (cert and key) and port:
        cert, key = tls.ensure_certificate(config.state_dir, port=port)  # one per port, kept
    if cert and key:
        with open(cert, "rb") as cert_file, open(key, "rb") as key_file:
            cert_pem, key_pem = cert_file.read(), key_file.read()
    else:
        cert_pem, key_pem = tls.self_signed()  # a port chosen at random: nothing to keep it for
    client_ca = getattr(config, "client_ca", "") or ""
    options = tls.pem_options(cert_pem, key_pem, tls.read_client_ca(client_ca) if client_ca else None)
    # TLS in large pieces over plain TCP, not listenSSL's record-at-a-time layer (bulk_tls.py)
    return TLSServerEndpoint(tcp, options), tls.fingerprint(cert_pem)


def local_url(config: ListenConfig, port) -> str:
    """How a process on this machine reaches a listening service (tests, logs, the demo)."""
    scheme = "https" if config.tls else "http"
    interface = config.listen_address
    host = "127.0.0.1" if interface in ("0.0.0.0", "") else "[::1]" if interface == "::" else interface
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address in a URL
    return f"{scheme}://{host}:{port.getHost().port}"


ConfigT = TypeVar("ConfigT", bound=ListenConfig)


class Daemon(Generic[ConfigT]):
    """The base of a service whose instances set config, reactor, port and fingerprint, and define
    listen(), stop() and started_message(); `log` is where its start-up lines go."""

    log = logging.getLogger("tomaat")
    config: ConfigT
    reactor: Any  # the Twisted reactor provides a dozen zope interfaces, which mypy does not see
    port: Any  # the IListeningPort while listening, else None
    fingerprint: str | None
    exit_code: int

    async def listen(self) -> Any:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def _endpoint(self):
        endpoint, self.fingerprint = server_endpoint(self.reactor, self.config)
        return endpoint

    @property
    def url(self) -> str:
        return local_url(self.config, self.port)

    def started_message(self) -> str:
        raise NotImplementedError

    def advice(self) -> list[str]:
        """Warnings worth a line at start: set-ups that some client (usually TOMAAT-Slicer) cannot use."""
        return []

    def run(self) -> None:
        """Serve until interrupted (SIGINT or SIGTERM stop the reactor, which awaits stop()); exit 1 if start fails."""
        log_to_stdlib()
        return_large_buffers()

        def started(port):
            self.log.info("%s", self.started_message())
            if self.fingerprint:
                self.log.info("TLS certificate fingerprint (SHA-256): %s", self.fingerprint)
            for line in self.advice():
                self.log.warning("%s", line)
            self.reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(self.stop()))

        def failed(failure):
            self.log.error("could not start: %s", failure.getErrorMessage())
            self.exit_code = 1
            self.reactor.stop()

        self.exit_code = 0
        self.reactor.callWhenRunning(lambda: Deferred.fromCoroutine(self.listen()).addCallbacks(started, failed))
        self.reactor.run()
        if self.exit_code:
            sys.exit(self.exit_code)
