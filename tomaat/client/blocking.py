"""The blocking facade for scripts and notebooks, on crochet.

Twisted's reactor can run only once per process and never restart, so a
blocking call cannot simply run the reactor per request. crochet (maintained
alongside Twisted) runs the reactor in a background thread and lets ordinary
code wait on a Deferred with a timeout; it coexists with Jupyter's own asyncio
loop, where `asyncio.run` would fail. Code that already runs a reactor should
use AsyncClient directly.
"""

from __future__ import annotations

import threading

import crochet

from .async_client import AsyncClient, ServiceInfo
from .async_client import discover as _discover
from .results import Result

_started = False


def _reactor_thread() -> None:
    global _started
    if not _started:
        crochet.setup()
        _started = True


def _wait(make, timeout: float | None):
    """Run make() (a coroutine factory) in the reactor thread and wait for its result here."""
    from twisted.internet.defer import Deferred

    @crochet.run_in_reactor
    def start():
        return Deferred.fromCoroutine(make())

    eventual = start()
    try:
        # crochet's stub says float; None waits without a limit, as threading.Event.wait(None) does
        return eventual.wait(timeout)  # type: ignore[arg-type]
    except crochet.TimeoutError:
        eventual.cancel()
        from .errors import ConnectionFailed

        raise ConnectionFailed(f"no answer within {timeout:g} s") from None


class Client:
    """`Client(url).info()`, `.interface()`, `.predict(**inputs)`: the AsyncClient's calls, waited for.

    Keyword arguments are those of AsyncClient (fingerprint, insecure,
    known_hosts, timeout, result_timeout, compress, reuse, token, client_cert). Volumes it stored on the
    server are left to expire there unless `forget()` or `close()` (or a `with` block).
    """

    def __init__(self, url: str, **options):
        _reactor_thread()
        self._async = _wait_plain(lambda: AsyncClient(url, **options))
        self.url = self._async.url
        self._calls = threading.local()  # what `filled` reports, per calling thread

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncClient", "Client", 1)  # the token hidden there too

    def info(self) -> ServiceInfo:
        return _wait(self._async.info, None)

    def interface(self) -> tuple:
        return _wait(self._async.interface, None)

    def predict(self, *, prefer_async: bool = False, progress=None, on_sent=None, **inputs) -> Result:
        """Inputs by element name: paths, SimpleITK images, points, values; defaults filled as in Slicer."""
        self._calls.filled = []  # a call that fails leaves no defaults of an earlier one behind
        result = _wait(
            lambda: self._async.predict(inputs, prefer_async=prefer_async, progress=progress, on_sent=on_sent), None
        )
        self._calls.filled = list(result.request.filled)
        return result

    def forget(self) -> int:
        """Delete the volumes this client stored on the server; returns how many it still held."""
        return _wait(self._async.forget, None)

    def close(self) -> None:
        """forget(), then close the connections."""
        _wait(self._async.close, None)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def uploads(self) -> int:
        """How many volumes this client has sent (inline or to the store): reuse sends fewer."""
        return self._async.uploads

    @property
    def filled(self) -> list:
        """The defaults this thread's last predict() filled in, as (name, value).

        Per thread, so that threads sharing one client each read their own call's;
        `result.request.filled` is the same list, tied to its result.
        """
        return list(getattr(self._calls, "filled", []))


def _wait_plain(function):
    """Call a plain function in the reactor thread (Twisted objects are created where they run)."""
    return crochet.run_in_reactor(function)().wait(30)


def discover(registry_url: str, modality=None, anatomy=None, task=None, **options) -> list[dict]:
    """The registry's live services, filtered by modality, anatomy and task (case-insensitive); options as for
    Client (a private registry takes token, client_cert)."""
    _reactor_thread()
    return _wait(lambda: _discover(registry_url, modality, anatomy, task, **options), None)
