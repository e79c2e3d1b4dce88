"""The asynchronous client on treq: every call returns a Deferred (or can be awaited in a coroutine).

It speaks both protocol versions. It asks GET /info first; a 404 there means a
v1 server, which is then described by GET /interface alone and sent base64 MHA
volumes as TOMAAT-Slicer sends them. Everything about a request is checked
before the upload starts (see requests.py).

With a v2 server it also: compresses a volume when that pays (compression.py);
asks for a binary answer (`Accept: multipart/mixed`) when /info says
`binary_answers: true`, decoded with the same checks as JSON (results.py); and,
when the server keeps volumes (`volume_store` in /info), uploads a volume once
with POST /volumes and predicts by its id from then on (see `predict`).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from OpenSSL import SSL
from twisted.internet import defer, error, task, threads
from twisted.web.client import ResponseFailed

from ..net.http_client import AnswerTooLarge, HttpClient, read_body, root_cause
from ..protocol import answers, binary_answers, elements, stored_volumes, untrusted_json
from ..protocol import metadata as model_metadata
from ..protocol import registry as wire
from . import compression
from .credentials import ClientCertificate, Token, as_certificate, as_token
from .errors import AccessRefused, ClientError, ConnectionFailed, ResultTimeout, ServerError, ValidationError
from .requests import PreparedRequest, prepare
from .results import Result
from .trust import KnownHosts, TrustOnFirstUse
from .upload import ProgressProducer, multipart_body

ENDPOINTS = ("/predict", "/interface", "/info", "/responses", "/health", "/discover", "/announce")
JSON_LIMIT = 16 * 1024 * 1024  # bytes of an /info, /interface or /health answer read; results are not bounded here
BINARY = b"multipart/mixed"  # the Accept header asking for a binary answer
CREDENTIALS_HINT = "give a token or a client certificate"

log = logging.getLogger("tomaat.client")


@dataclass
class StoredVolume:
    """A volume the server keeps for us: its id, and until when (time.monotonic) it is trusted to be there."""

    volume_id: str
    expires: float
    size: int = 0  # the bytes the server says it holds


class _UnknownVolume(Exception):
    """The server no longer holds a volume this request named (404 unknown volume_id)."""


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

    @property
    def binary_answers(self) -> bool:
        """Whether the server answers multipart/mixed when asked (v2, `"binary_answers": true` in /info)."""
        return self.protocol >= 2 and self.metadata.get("binary_answers") is True

    @property
    def volume_store(self) -> dict | None:
        """{"ttl": seconds, "max_bytes": n} when the server keeps uploaded volumes (POST /volumes), else None."""
        store = self.metadata.get("volume_store") if self.protocol >= 2 else None
        if not isinstance(store, dict):
            return None
        ttl = store.get("ttl")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            return None
        return store


def _error_message(body: bytes, status: int) -> str:
    """The server's own words from a v1 error body, else the start of whatever it sent."""
    try:
        items = untrusted_json.loads(body.decode("utf-8"))
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
    `compress`: None compresses volumes when it pays (compression.py), True and False force it.
    `reuse`: None keeps volumes on a server that has a volume store when the server is far (as
    compression.py tells it) and the volume holds at least 256 KiB; True whenever the server has a
    store; False never. Stored volumes are left to expire on the server unless `forget()` or `close()`.
    `token` (text or a credentials.Token) goes in an `Authorization: Bearer` header of every request to this
    service; `client_cert` ((cert path, key path) or a credentials.ClientCertificate) is shown to a server that
    asks for one. Neither appears in repr(), logs or errors.
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
        compress: bool | None = None,
        reuse: bool | None = None,
        token: Token | str | None = None,
        client_cert: ClientCertificate | tuple[str, str] | None = None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.url = base_url(url)
        self.timeout = timeout
        self.result_timeout = result_timeout
        self._token = as_token(token)
        self.client_cert = as_certificate(client_cert)
        self.trust = TrustOnFirstUse(
            KnownHosts(known_hosts), pinned=fingerprint, insecure=insecure, client_cert=self.client_cert
        )
        if self._token is not None and urlsplit(self.url).scheme == "http" and not _loopback(self.url):
            log.warning("tomaat: sending a token to %s over plain HTTP: anyone on the way can read it", self.url)
        self.http = HttpClient(reactor, self.trust, connect_timeout=timeout)
        self._secure = urlsplit(self.url).scheme == "https"  # HttpClient's TLS layer takes uploads uncopied
        self.compress = compress
        self.reuse = reuse
        self.uploads = 0  # volumes this client has sent, inline or to the store: what reuse saves
        self._info: ServiceInfo | None = None
        self.distance: float | None = None  # seconds of the quickest exchange timed (a new connection and a request)
        self._far: bool | None = None
        self._stored: dict[tuple, StoredVolume] = {}  # a volume's key (VolumeFile.key) -> where the server keeps it
        self._storing: dict[tuple, defer.DeferredLock] = {}  # concurrent calls upload a volume once

    def __repr__(self) -> str:
        shown = [f"token={'<hidden>' if self._token else None}"]
        if self.client_cert is not None:
            shown.append(f"client_cert={self.client_cert.cert_path!r}")
        return f"AsyncClient({self.url!r}, {', '.join(shown)})"

    # ---- plumbing ------------------------------------------------------------------------------

    def _authorized(self, kwargs: dict) -> dict:
        """The request's keyword arguments with the token's header added (a copy: callers reuse theirs)."""
        if self._token is None:
            return kwargs
        headers = dict(kwargs.get("headers") or {})
        headers[b"Authorization"] = [self._token.authorization()]
        return {**kwargs, "headers": headers}

    def _server_error(self, body: bytes, status: int) -> ServerError:
        """The server's refusal in its own words; a 401 or 403 also says what the client can do about it."""
        message = _error_message(body, status)
        if self._token is not None:
            message = self._token.redact(message)  # a server that echoes the token does not get it printed
        if status == 401:
            if self._token is None and self.client_cert is None:
                return AccessRefused(f"{self.url} needs credentials: {message}; {CREDENTIALS_HINT}", status)
            return AccessRefused(f"{self.url} did not accept the credentials given: {message}", status)
        if status == 403:
            return AccessRefused(message, status)
        return ServerError(message, status)

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
            return await self.http.request(
                method, self.url + path, timeout=timeout, limit=limit, **self._authorized(kwargs)
            )
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
            raise self._server_error(body, status)
        try:
            return status, untrusted_json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ServerError(f"{self.url}{path} did not answer JSON (HTTP {status})", status) from None

    # ---- the API ------------------------------------------------------------------------------

    async def info(self) -> ServiceInfo:
        """Metadata and interfaces: GET /info (v2), or GET /interface when /info is 404 (v1)."""
        if self._info is None:
            began = time.monotonic()
            status, body = await self._request(
                "GET", "/info", "asking for /info", timeout=self.timeout, limit=JSON_LIMIT
            )
            self.distance = time.monotonic() - began
            try:
                parsed = untrusted_json.loads(body.decode("utf-8")) if status == 200 else None
            except (UnicodeDecodeError, ValueError):
                parsed = None
            try:
                if isinstance(parsed, dict) and "input_interface" in parsed:
                    self._info = ServiceInfo.from_v2(parsed)
                elif status in (404, 405) or status == 200:
                    _, interface = await self._json("GET", "/interface", "asking for /interface")
                    self._info = ServiceInfo(1, elements.input_interface(interface))
                else:
                    raise self._server_error(body, status)
            except (elements.InterfaceError, TypeError, ValueError, AttributeError) as problem:
                raise ServerError(f"the server's interface cannot be used: {str(problem)[:200]}") from None
        return self._info

    async def far(self) -> bool:
        """Whether the server is far, so that its bytes are dear (compression.py): its GET /info took NEAR
        (15 ms) or more, and so did one more exchange (GET /health), timed only then."""
        if self._far is None:
            await self.info()
            if self.distance is not None and self.distance >= compression.NEAR:
                began = time.monotonic()
                try:
                    await self._request("GET", "/health", "asking for /health", timeout=self.timeout, limit=JSON_LIMIT)
                    self.distance = min(self.distance, time.monotonic() - began)
                except ClientError:
                    pass
            self._far = self.distance is not None and self.distance >= compression.NEAR
        return self._far

    async def interface(self) -> tuple:
        """The input elements (tomaat.protocol.elements objects)."""
        return (await self.info()).inputs

    async def predict(
        self, inputs: dict, *, prefer_async: bool = False, progress=None, on_sent=None, compress: bool | None = None
    ) -> Result:
        """Check, upload, wait for and decode one prediction.

        `progress(sent, total)` is called while a body uploads (a volume to the store, then
        the prediction request) and `on_sent(prepared)` once the prediction request is written
        (the command line switches from its bar to a spinner there). The result's `request` is
        the prepared request of this call: `result.request.filled` says which defaults were used.
        `compress` overrides the client's setting for this call.

        A volume the server keeps (see `reuse`) is named by its id instead of uploaded. If the
        server answers 404 `unknown volume_id` (it expired, the server restarted), the volume is
        uploaded again, once, and the prediction repeated.
        """
        info = await self.info()
        compress = self.compress if compress is None else compress
        prepared = await self._off_reactor(prepare, info.inputs, inputs)
        deadline = time.monotonic() + self.result_timeout  # the whole wait, sending included
        for attempt in (1, 2):
            references = {}
            for name in prepared.volumes() if self._reusing(info) else ():
                stored = await self._store(name, prepared.values[name], compress, progress)
                if stored is not None:
                    references[name] = stored
            began = time.monotonic()
            try:
                result = await self._predict_once(
                    info, prepared, references, compress, prefer_async, progress, on_sent, deadline
                )
            except _UnknownVolume as unknown:
                for key, held in list(self._stored.items()):
                    if held.volume_id in references.values():
                        del self._stored[key]
                if attempt == 2:
                    raise ServerError(str(unknown), 404) from None
                continue
            self._used(references, began, info)
            result.request = prepared  # on the result, not the client, where concurrent calls would overwrite it
            return result
        raise AssertionError("unreachable")

    def _used(self, references: dict, began: float, info: ServiceInfo) -> None:
        """The server's time to live slides: a prediction that took a stored volume restarts it."""
        ttl = float((info.volume_store or {}).get("ttl") or 0)
        for stored in self._stored.values():
            if stored.volume_id in references.values():
                stored.expires = max(stored.expires, began + ttl - _margin(ttl))

    def _reusing(self, info: ServiceInfo) -> bool:
        return info.volume_store is not None and self.reuse is not False

    async def _predict_once(
        self, info, prepared: PreparedRequest, references: dict, compress, prefer_async, progress, on_sent, deadline
    ) -> Result:
        far = await self.far() if info.protocol >= 2 else False  # v1 servers are sent today's request
        body, content_type = await self._off_reactor(_body, info, prepared, references, far, compress)
        self.uploads += len(prepared.volumes()) - len(references)
        headers = {b"Content-Type": [content_type.encode("ascii")]}
        if prefer_async:
            headers[b"Prefer"] = [b"respond-async"]
        if info.binary_answers:
            headers[b"Accept"] = [BINARY]
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

        producer = ProgressProducer(body, report, read=self._off_reactor, views=self._secure)
        timeout = max(0.0, deadline - time.monotonic())
        try:
            status, kind, answer = await self._exchange(
                "POST", "/predict", timeout=timeout, data=producer, headers=headers
            )
        except Exception as failure:
            if producer.failure is not None:
                raise _as_client_error(producer.failure) from None
            if time.monotonic() >= deadline:  # cancelled by the timeout, however treq reports the cancellation
                raise ResultTimeout(f"{self.url} gave no answer within {self.result_timeout:g} s") from None
            raise self._failed(failure, "sending the prediction request") from None
        if status == 404 and references:
            message = _error_message(answer, status)
            if "unknown volume_id" in message:
                raise _UnknownVolume(message)
        parts, items = await self._off_reactor(self._answer, status, kind, answer)
        if parts is None:
            request_id = answers.delayed_id(items)
            if request_id is not None:
                left = max(0.0, deadline - time.monotonic())
                parts, items = await self._collect(request_id, left, info.binary_answers)
        if parts is not None:
            return await self._off_reactor(Result.from_parts, parts, info.outputs)
        return await self._off_reactor(Result.from_items, items, info.outputs)

    async def _exchange(self, method: str, path: str, *, timeout: float | None, limit: int | None = None, **kwargs):
        """(status, Content-Type, body) of one exchange, as HttpClient.request but with the answer's type."""

        async def exchange():
            response = await self.http.treq.request(method, self.url + path, **self._authorized(kwargs))
            kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1")
            return response.code, kind, await read_body(response, limit)

        attempt = defer.Deferred.fromCoroutine(exchange())
        if timeout is not None:
            attempt.addTimeout(timeout, self.reactor)
        return await attempt

    def _answer(self, status: int, kind: str, body: bytes) -> tuple[list | None, list | None]:
        """(parts of a binary answer, None) or (None, the JSON items); errors are always JSON."""
        if status < 400 and kind.lower().startswith("multipart/mixed"):
            try:
                return binary_answers.decode(body, kind), None
            except ValueError as problem:
                raise ServerError(f"the server's binary answer is malformed: {problem}", status) from None
        return None, self._items(status, body)

    # ---- stored volumes ---------------------------------------------------------------------------

    async def _store(self, name: str, volume, compress, progress) -> str | None:
        """The id under which the server keeps this volume, uploading it to POST /volumes when it holds
        none (or ours expired); None where it is sent inline instead (too small to be worth it, the
        store full)."""
        size = volume.size or _image_bytes(volume)
        if self.reuse is None and (not await self.far() or size < compression.MIN_BYTES):
            return None
        key = await self._off_reactor(volume.key)
        lock = self._storing.setdefault(key, defer.DeferredLock())  # one upload of a volume at a time
        await lock.acquire()
        try:
            stored = self._stored.get(key)
            if stored is None or stored.expires <= time.monotonic():
                self._stored.pop(key, None)
                stored = await self._upload_volume(name, volume, compress, progress)
                if stored is None:
                    return None
                self._stored[key] = stored
            return stored.volume_id
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._storing.pop(key, None)

    async def _upload_volume(self, name: str, volume, compress, progress) -> StoredVolume | None:
        payload, fmt = await self._off_reactor(volume.upload, await self.far(), compress)
        body, content_type = multipart_body([("volume", f"volume.{fmt}", payload)])
        producer = ProgressProducer(body, progress, read=self._off_reactor, views=self._secure)
        began = time.monotonic()
        headers = {b"Content-Type": [content_type.encode("ascii")]}
        try:
            status, _, answer = await self._exchange(
                "POST", "/volumes", timeout=self.result_timeout, limit=JSON_LIMIT, data=producer, headers=headers
            )
        except Exception as failure:
            if producer.failure is not None:
                raise _as_client_error(producer.failure) from None
            raise self._failed(failure, "uploading a volume to POST /volumes") from None
        self.uploads += 1
        if status in (404, 405, 507):  # no store after all, or a full one: the volume goes with the request
            return None
        if status >= 400:  # the server's words, naming the input as an upload with the prediction would
            refusal = self._server_error(answer, status)
            if type(refusal) is ServerError:
                refusal = ServerError(
                    refusal.message.replace("field 'volume' (volume)", f"field '{name}' (volume)", 1), status
                )
            raise refusal
        try:
            stored = untrusted_json.loads(answer.decode("utf-8"))
            volume_id, expires_in = stored["volume_id"], float(stored["expires_in"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise ServerError(f"{self.url}/volumes did not answer a volume_id and expires_in (HTTP {status})") from None
        if not stored_volumes.is_volume_id(volume_id) or not expires_in > 0:
            raise ServerError(f"{self.url}/volumes answered a malformed volume_id or expires_in")
        # counted from before the upload (the server's clock started later), less a margin for the next request
        return StoredVolume(volume_id, began + expires_in - _margin(expires_in), int(stored.get("bytes") or 0))

    @property
    def stored(self) -> dict[tuple, StoredVolume]:
        """The volumes this client believes the server keeps, by their key (inputs.VolumeFile.key)."""
        return dict(self._stored)

    async def forget(self) -> int:
        """DELETE every volume this client stored; returns how many the server still held."""
        held, self._stored = list(self._stored.values()), {}
        deleted = 0
        for stored in held:
            try:
                status, _ = await self._request(
                    "DELETE", f"/volumes/{stored.volume_id}", "deleting a stored volume", timeout=self.timeout
                )
            except ClientError:
                continue  # it expires on its own
            deleted += status == 204
        return deleted

    def _items(self, status: int, body: bytes) -> list:
        if status >= 400:
            raise self._server_error(body, status)
        try:
            items = untrusted_json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ServerError(f"the server's answer is not JSON (HTTP {status})", status) from None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ServerError(f"the server's answer is not a list of output items (HTTP {status})", status)
        message = answers.error_message(items)  # a v1 server answers errors with status 200
        if message is not None:
            raise ServerError(message, status)
        return items

    async def collect(self, request_id: str, timeout: float | None = None) -> list:
        """Poll POST /responses with backoff (0.1 s doubling to 2 s) until the result (JSON items) or the timeout."""
        return (await self._collect(request_id, timeout, False))[1] or []

    async def _collect(self, request_id: str, timeout: float | None, binary: bool) -> tuple[list | None, list | None]:
        """(parts, None) of a binary answer when asked for one, else (None, items)."""
        timeout = self.result_timeout if timeout is None else timeout
        deadline, delay = time.monotonic() + timeout, 0.1
        body = urlencode({"request_id": request_id}).encode("ascii")
        headers = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
        if binary:
            headers[b"Accept"] = [BINARY]
        while True:
            try:
                status, kind, answer = await self._exchange(
                    "POST", "/responses", timeout=self.timeout, data=body, headers=headers
                )
            except Exception as failure:
                raise self._failed(failure, "collecting a delayed result") from None
            parts, items = await self._off_reactor(self._answer, status, kind, answer)
            if parts is not None or answers.delayed_id(items) is None:
                return parts, items
            if time.monotonic() + delay > deadline:
                raise ResultTimeout(
                    f"the result of request {request_id} did not arrive within {timeout:g} s; "
                    f"it may still be collected from {self.url}/responses"
                )
            await task.deferLater(self.reactor, delay, lambda: None)
            delay = min(delay * 2, 2.0)

    async def health(self) -> dict:
        return (await self._json("GET", "/health", "asking for /health"))[1]

    async def close(self) -> None:
        """Delete the volumes this client stored (forget), then close its connections."""
        await self.forget()
        await self.http.close()


def _body(info: ServiceInfo, prepared: PreparedRequest, references: dict, far: bool, compress):
    """(multipart body, content type) of a prediction request; reads, and compresses where it pays (in the
    thread pool). A v2 volume is its upload, or the reference to the stored volume named in references."""
    parts: dict[str, tuple] = {}
    if info.protocol >= 2:
        for name in prepared.volumes():
            if name in references:
                parts[name] = (None, stored_volumes.reference(references[name]).encode("ascii"))
            else:
                payload, fmt = prepared.values[name].upload(far, compress)
                parts[name] = (f"{name}.{fmt}", payload)
    return multipart_body(prepared.fields(info.protocol, parts))


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _margin(ttl: float) -> float:
    """How long before the server's expiry a stored volume is no longer named but uploaded again."""
    return min(10.0, 0.05 * ttl)


def _image_bytes(volume) -> int:
    image = getattr(volume, "image", None)
    if image is None:
        return 0
    return image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()


def _as_client_error(problem: BaseException) -> ClientError:
    return problem if isinstance(problem, ClientError) else ConnectionFailed(f"the upload failed: {problem}")


async def discover(
    registry_url: str, modality=None, anatomy=None, task=None, *, reactor=None, timeout: float = 30.0, **trust
) -> list[dict]:
    """The registry's live services, filtered without regard to case (here too, for v1 registries).

    `trust` takes AsyncClient's fingerprint, insecure, known_hosts, and token and client_cert for a private
    registry that asks for a read token."""
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
