"""Twisted web plumbing shared by the prediction server and the registry.

Requests are not parsed on the reactor (bodies are read in worker threads),
each request remembers when its headers arrived so the receive stage can be
timed, and every answer, 404s included, carries the CORS headers.
"""

from __future__ import annotations

import time

from twisted.web import resource, server

CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, POST, OPTIONS",
    b"Access-Control-Allow-Headers": b"*",
    b"Access-Control-Max-Age": b"86400",
}


class TimedRequest(server.Request):
    def __init__(self, *args, **kwargs):
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)
        self.headers_at = time.perf_counter()
        self.received_at = None

    def gotLength(self, length):
        self.headers_at = time.perf_counter()
        super().gotLength(length)

    def requestReceived(self, command, path, version):
        self.received_at = time.perf_counter()
        super().requestReceived(command, path, version)


class CorsResource(resource.Resource):
    isLeaf = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def render(self, request):
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        if request.method == b"OPTIONS":
            request.setResponseCode(204)
            return b""
        return self.inner.render(request)


class QuietSite(server.Site):
    """Our services log one line per request themselves, with timings; Twisted's access log is off."""

    requestFactory = TimedRequest

    def log(self, request):
        pass


def make_site(klein_resource) -> server.Site:
    return QuietSite(CorsResource(klein_resource))


def log_to_stdlib() -> None:
    """Send Twisted's log events to the standard logging module, configured once for the process."""
    import logging

    from twisted.logger import STDLibLogObserver, globalLogBeginner

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)
