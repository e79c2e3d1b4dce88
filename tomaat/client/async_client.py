"""The asynchronous client on treq: every call returns a Deferred (or can be awaited in a coroutine).

It speaks both protocol versions. It asks GET /info first; a 404 there means a
v1 server, which is then described by GET /interface alone and sent base64 MHA
volumes as TOMAAT-Slicer sends them. Everything about a request is checked
before the upload starts (see requests.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from OpenSSL import SSL
from twisted.internet import defer, error, task, threads
from twisted.web.client import ResponseFailed

from ..http_client import AnswerTooLarge, HttpClient, root_cause
from ..protocol import answers, elements
from ..protocol import metadata as model_metadata
from ..protocol import registry as wire
from .errors import ClientError, ConnectionFailed, ResultTimeout, ServerError, ValidationError
from .requests import prepare
from .results import Result
from .trust import KnownHosts, TrustOnFirstUse
from .upload import ProgressProducer, multipart_body

ENDPOINTS = ("/predict", "/interface", "/info", "/responses", "/health", "/discover", "/announce")
JSON_LIMIT = 16 * 1024 * 1024  # bytes of an /info, /interface or /health answer read; results are not bounded here


def base_url(url: str) -> str:
    """The service's base URL, whether given as https://host:9000 or as one of its endpoints (…/predict)."""
    url = url.strip().rstrip("/")
    for endpoint in ENDPOINTS:
        if url.endswith(endpoint):
            url = url[: -len(endpoint)]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"{url!r} is not an http(s) URL with a host, e.g. https://server:9000")
    return url


@dataclass
class ServiceInfo:
    """What a server says about itself; v1 servers only tell their inputs (protocol 1)."""

    protocol: int
    inputs: tuple
    outputs: tuple = ()
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_v2(cls, info: dict) -> ServiceInfo:
        return cls(
            int(info.get("protocol", 2)),
            elements.input_interface(info.get("input_interface")),
            elements.output_interface(info.get("output_interface")),
            info,
        )

    @property
    def model(self) -> dict:
        """The model metadata the server states (licence, citation, accuracy, ...), shaped; empty from v1 servers."""
        return model_metadata.parse(self.metadata)


def _error_message(body: bytes, status: int) -> str:
    """The server's own words from a v1 error body, else the start of whatever it sent."""
    try:
        items = json.loads(body.decode("utf-8"))
        if isinstance(items, list) and items and isinstance(items[0], dict) and "content" in items[0]:
            return str(items[0]["content"])
        if isinstance(items, dict) and "error" in items:
            return str(items["error"])
    except (UnicodeDecodeError, ValueError):
        pass
    text = body.decode("utf-8", "replace").strip().splitlines()
    return f"HTTP {status}" + (f": {text[0][:200]}" if text else "")


class AsyncClient:
    """One server, by URL. `trust` is a TLS policy for https (default: trust on first use).

    `fingerprint` pins the server's certificate ahead of the first connection;
    `insecure=True` accepts any certificate (an explicit choice, never a fallback).
    """

    def __init__(
        self,
        url: str,
        *,
        reactor=None,
        fingerprint: str | None = None,
        insecure: bool = False,
        known_hosts: str | None = None,
        timeout: float = 30.0,
        result_timeout: float = 3600.0,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.url = base_url(url)
        self.timeout = timeout
        self.result_timeout = result_timeout
        self.trust = TrustOnFirstUse(KnownHosts(known_hosts), pinned=fingerprint, insecure=insecure)
        self.http = HttpClient(reactor, self.trust, connect_timeout=timeout)
        self._info: ServiceInfo | None = None

    # ---- plumbing ------------------------------------------------------------------------------

    def _off_reactor(self, work, *args):
        """Reading and encoding volumes, and decoding results, in the reactor's thread pool.

        On the reactor thread they would stall every other connection of the
        process for as long as they take (over 100 ms for a 64 MiB volume).
        """
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), work, *args)

    def _failed(self, failure_error: BaseException, what: str) -> ClientError:
        refusal = self.trust.refusal()
        if refusal is not None:
            return refusal
        cause = root_cause(failure_error)
        if isinstance(cause, SSL.Error):
            return ConnectionFailed(f"TLS with {self.url} failed while {what}: {cause}")
        if isinstance(cause, error.ConnectionRefusedError):
            return ConnectionFailed(f"could not connect to {self.url} while {what}: connection refused")
        if isinstance(cause, (defer.TimeoutError, defer.CancelledError, error.TimeoutError)):
            return ConnectionFailed(f"{self.url} did not answer within {self.timeout:g} s while {what}")
        if isinstance(cause, error.DNSLookupError):
            return ConnectionFailed(f"could not connect to {self.url} while {what}: unknown host")
        return ConnectionFailed(f"could not connect to {self.url} while {what}: {cause}")

    async def _request(
        self, method: str, path: str, what: str, timeout: float | None = None, limit: int | None = None, **kwargs
    ):
        """(status, body bytes); the timeout covers connecting, sending and reading the answer, limit the body."""
        try:
            return await self.http.request(method, self.url + path, timeout=timeout, limit=limit, **kwargs)
        except ClientError:
            raise
        except AnswerTooLarge as failure:
            raise ServerError(f"the answer of {self.url}{path} is larger than {failure.limit} bytes; refused") from None
        except (ResponseFailed, error.ConnectError, error.ConnectionLost, defer.TimeoutError, SSL.Error) as failure:
            raise self._failed(failure, what) from None
        except Exception as failure:  # e.g. a TLS refusal surfacing as a wrapped failure list
            raise self._failed(failure, what) from None

    async def _json(self, method: str, path: str, what: str, limit: int = JSON_LIMIT, **kwargs):
        status, body = await self._request(method, path, what, timeout=self.timeout, limit=limit, **kwargs)
        if status >= 400:
            raise ServerError(_error_message(body, status), status)
        try:
            return status, json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ServerError(f"{self.url}{path} did not answer JSON (HTTP {status})", status) from None

    # ---- the API ------------------------------------------------------------------------------

    async def info(self) -> ServiceInfo:
        """Metadata and interfaces: GET /info (v2), or GET /interface when /info is 404 (v1)."""
        if self._info is None:
            status, body = await self._request(
                "GET", "/info", "asking for /info", timeout=self.timeout, limit=JSON_LIMIT
            )
            try:
                parsed = json.loads(body.decode("utf-8")) if status == 200 else None
            except (UnicodeDecodeError, ValueError):
                parsed = None
            try:
                if isinstance(parsed, dict) and "input_interface" in parsed:
                    self._info = ServiceInfo.from_v2(parsed)
                elif status in (404, 405) or status == 200:
                    _, interface = await self._json("GET", "/interface", "asking for /interface")
                    self._info = ServiceInfo(1, elements.input_interface(interface))
                else:
                    raise ServerError(_error_message(body, status), status)
            except (elements.InterfaceError, TypeError, ValueError, AttributeError) as problem:
                raise ServerError(f"the server's interface cannot be used: {str(problem)[:200]}") from None
        return self._info

    async def interface(self) -> tuple:
        """The input elements (tomaat.protocol.elements objects)."""
        return (await self.info()).inputs

    async def predict(self, inputs: dict, *, prefer_async: bool = False, progress=None, on_sent=None) -> Result:
        """Check, upload, wait for and decode one prediction.

        `progress(sent, total)` is called while the body uploads and
        `on_sent(prepared)` once all of it is written (the command line
        switches from its bar to a spinner there). The result's `request` is the prepared
        request of this call: `result.request.filled` says which defaults were used.
        """
        info = await self.info()
        prepared, (body, content_type) = await self._off_reactor(_build, info, inputs)
        headers = {b"Content-Type": [content_type.encode("ascii")]}
        if prefer_async:
            headers[b"Prefer"] = [b"respond-async"]
        limit = info.metadata.get("max_upload_bytes")
        if isinstance(limit, int) and len(body) > limit:
            raise ValidationError(
                f"the request is {len(body)} bytes; this server accepts at most {limit} bytes (its max_upload_bytes)"
            )

        def report(sent: int, total: int) -> None:
            if progress is not None:
                progress(sent, total)
            if sent == total and on_sent is not None:
                on_sent(prepared)  # uploaded: from here on the server is working

        producer = ProgressProducer(body, report)
        deadline = time.monotonic() + self.result_timeout  # the whole wait, sending included
        try:
            status, answer = await self.http.request(
                "POST", self.url + "/predict", timeout=self.result_timeout, data=producer, headers=headers
            )
        except Exception as failure:
            if time.monotonic() >= deadline:  # cancelled by the timeout, however treq reports the cancellation
                raise ResultTimeout(f"{self.url} gave no answer within {self.result_timeout:g} s") from None
            raise self._failed(failure, "sending the prediction request") from None
        items = await self._off_reactor(self._items, status, answer)
        request_id = answers.delayed_id(items)
        if request_id is not None:
            left = max(0.0, deadline - time.monotonic())
            items = await self.collect(request_id, timeout=left)
        result = await self._off_reactor(Result.from_items, items, info.outputs)
        result.request = prepared  # on the result, not the client, where concurrent calls would overwrite it
        return result

    def _items(self, status: int, body: bytes) -> list:
        if status >= 400:
            raise ServerError(_error_message(body, status), status)
        try:
            items = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ServerError(f"the server's answer is not JSON (HTTP {status})", status) from None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ServerError(f"the server's answer is not a list of output items (HTTP {status})", status)
        message = answers.error_message(items)  # a v1 server answers errors with status 200
        if message is not None:
            raise ServerError(message, status)
        return items

    async def collect(self, request_id: str, timeout: float | None = None) -> list:
        """Poll POST /responses with backoff (0.1 s doubling to 2 s) until the result or the timeout."""
        timeout = self.result_timeout if timeout is None else timeout
        deadline, delay = time.monotonic() + timeout, 0.1
        body = urlencode({"request_id": request_id}).encode("ascii")
        headers = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
        while True:
            status, answer = await self._request(
                "POST", "/responses", "collecting a delayed result", timeout=self.timeout, data=body, headers=headers
            )
            items = await self._off_reactor(self._items, status, answer)
            if answers.delayed_id(items) is None:
                return items
            if time.monotonic() + delay > deadline:
                raise ResultTimeout(
                    f"the result of request {request_id} did not arrive within {timeout:g} s; "
                    f"it may still be collected from {self.url}/responses"
                )
            await task.deferLater(self.reactor, delay, lambda: None)
            delay = min(delay * 2, 2.0)

    async def health(self) -> dict:
        return (await self._json("GET", "/health", "asking for /health"))[1]

    def close(self):
        return self.http.close()


def _build(info: ServiceInfo, inputs: dict):
    """(the checked request, (its multipart body, content type)): reads every input file."""
    prepared = prepare(info.inputs, inputs)
    return prepared, multipart_body(prepared.fields(info.protocol))


async def discover(
    registry_url: str, modality=None, anatomy=None, task=None, *, reactor=None, timeout: float = 30.0, **trust
) -> list[dict]:
    """The registry's live services, filtered without regard to case (here too, for v1 registries)."""
    client = AsyncClient(registry_url, reactor=reactor, timeout=timeout, **trust)
    wanted = {k: v for k, v in zip(wire.FILTERS, (modality, anatomy, task), strict=True) if v}
    query = ("?" + urlencode(wanted)) if wanted else ""
    what = "asking the registry for /discover"
    _, answer = await client._json("GET", "/discover" + query, what, limit=wire.DISCOVER_LIMIT)
    try:
        services = wire.parse_discover(answer)
    except ValueError as problem:
        raise ServerError(f"{client.url}/discover did not answer a list of services ({problem})") from None
    return [service for service in services if wire.matches(service, wanted)]
