"""A hospital PACS over DICOMweb: find a series (QIDO-RS), fetch its instances (WADO-RS), store SEGs (STOW-RS).

The exchanges run on treq in the client's reactor thread (crochet), as the prediction client's do, because a
PACS is a peer that may be slow or hostile and requests cannot bound one: its timeout is per socket read, so a
server sending a byte a second holds it forever, and dicomweb-client's retries multiply it. Here every exchange
has one deadline, the command's (`Deadline`), covering connecting, sending and reading the whole answer; nothing
is retried, so nothing multiplies it. Answers are bounded while they arrive: QIDO JSON as the client bounds
JSON (JSON_LIMIT), a series at max_bytes.

WADO-RS asks for the instances as the PACS stores them (`transfer-syntax=*`): asking for none means Explicit VR
Little Endian, which a PACS without a transcoder for the stored syntax (Debian's Orthanc and JPEG 2000) answers
with HTTP 500. The instances are never parsed here: this process can read the user's files, so it keeps them
as bytes (dicomweb-client's multipart decoding and encoding, internals of the pinned release) and the confined
decoders read them (tomaat/dicom/series.py). The PACS's JSON answers are read with the json module only.

Credentials go into the Authorization header only: they are never printed, logged or put in a message.
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast
from urllib.parse import quote, urlsplit

from OpenSSL import SSL
from twisted.internet import defer, error

from ..client.async_client import JSON_LIMIT
from ..client.errors import ConnectionFailed, ValidationError
from ..net.http_client import AnswerTooLarge, HttpClient, receive, root_cause
from ..protocol import untrusted_json

if TYPE_CHECKING:
    from requests import Response

# Series that are not images a service can take, as QIDO names their modality.
NOT_IMAGES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC", "OT"})
DEFAULT_MAX_BYTES = 8 * 1024**3  # a 2,000-slice 1024^2 series; past this a PACS's answer is refused
STOW_ANSWER_LIMIT = 1 << 20  # a STOW-RS answer lists the stored instances: a few kB for a few SEGs
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'  # as stored (PS3.18 8.7.3.5.2)
QIDO_ACCEPT = "application/dicom+json, application/json"
UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")  # PS3.5 9.1: digits and dots, at most 64 characters
_STOW_FAILED = "00081198"  # FailedSOPSequence
_BOUNDARY = "tomaat-0c3b5f9e2d1a4786"


class PacsUnreachable(ConnectionFailed):
    """The PACS could not be reached, failed, or sent what cannot be read (exit status 1)."""


class PacsRefused(ValidationError):
    """The PACS refused what was asked, or has no such study or series (exit status 2)."""


class TimedOut(ConnectionFailed):
    """The command's deadline passed (exit status 1, as for a peer that stops answering)."""


class Deadline:
    """One end for a whole command: every exchange gets what is left of it, not a fresh timeout of its own."""

    def __init__(self, seconds: float, name: str = "--timeout"):
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValidationError(f"{name} must be a positive number of seconds, got {seconds:g}")
        self.seconds = seconds
        self.name = name
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def __str__(self) -> str:
        return f"the {self.seconds:g} s of {self.name}"


@dataclass(frozen=True)
class SeriesFound:
    uid: str
    modality: str
    description: str
    instances: int | None  # as QIDO counts them, when the PACS says

    def describe(self) -> str:
        count = f", {self.instances} instances" if self.instances is not None else ""
        description = f" {self.description!r}" if self.description else ""
        return f"{self.uid} ({self.modality or 'no modality'}{description}{count})"


def _value(attributes: dict, tag: str):
    """The first value of a DICOM JSON attribute, or None: QIDO answers are untrusted JSON, so shapes are checked."""
    item = attributes.get(tag) if isinstance(attributes, dict) else None
    values = item.get("Value") if isinstance(item, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _text(attributes: dict, tag: str) -> str:
    value = _value(attributes, tag)
    return value.strip()[:200] if isinstance(value, str) else ""


def credentials(user: str | None = None, password: str | None = None, token: str | None = None) -> dict:
    """The Authorization header for basic or bearer authentication (never both); empty without credentials."""
    if token:
        return {"Authorization": f"Bearer {token}"}
    if user is not None:
        pair = f"{user}:{password or ''}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    return {}


def check_uid(uid: str, what: str) -> str:
    """A UID goes into the URL's path, so it must be one: digits and dots, not '..' or '?'."""
    if not (isinstance(uid, str) and len(uid) <= 64 and UID.fullmatch(uid)):
        raise PacsRefused(f"{what} {str(uid)[:80]!r} is not a DICOM UID; expected digits and dots, e.g. 1.2.840.1")
    return uid


class _Received:
    """An answer as dicomweb-client's multipart decoder reads a streamed response: its Content-Type and its
    chunks, each let go once read, so the answer and its instances are not both held whole."""

    def __init__(self, content_type: str, chunks: deque):
        self.headers = {"content-type": content_type}
        self._chunks = chunks

    def iter_content(self, chunk_size=None, decode_unicode=False):
        while self._chunks:
            yield self._chunks.popleft()

    @property
    def content(self) -> bytes:
        return b"".join(self.iter_content())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._chunks.clear()


class Pacs:
    """One DICOMweb service. Every failure is a PacsUnreachable, PacsRefused or TimedOut naming the PACS.

    `headers` carries the credentials (credentials()); `deadline` bounds every exchange together (default:
    an hour from now); `max_bytes` one series' answer. Its calls block, waiting on crochet's reactor thread
    as tomaat.client.blocking does, so it is not for code that runs a reactor of its own.
    """

    def __init__(self, url: str, headers: dict | None = None, deadline: Deadline | None = None, max_bytes: int = 0):
        from dicomweb_client.api import DICOMwebClient

        self.url = url.strip().rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise PacsRefused(
                f"--dicomweb {url!r} is not a DICOMweb URL; expected e.g. https://pacs.hospital/dicom-web"
            )
        self.deadline = deadline or Deadline(3600.0)
        self.max_bytes = max_bytes or DEFAULT_MAX_BYTES
        self._headers = dict(headers or {})
        self._multipart = DICOMwebClient(self.url)  # for its multipart coding only; it never connects
        self._http: HttpClient | None = None
        # where a refused request's message says credentials come from; the gateway names its own settings
        self.credentials_hint = "--user/--password or --token, or TOMAAT_DICOMWEB_USER/_PASSWORD/_TOKEN"

    # ---- exchanges ---------------------------------------------------------------------------------

    def _exchange(self, method: str, path: str, doing: str, *, accept: str, limit: int, late: str = "", **kwargs):
        """(status, Content-Type, deque of body chunks); the deadline covers connecting and the whole answer.

        `late` is added to the message of an exchange that the deadline cut off after it began.
        """
        left = self.deadline.left()
        if left <= 0:
            raise TimedOut(f"{self.deadline} passed before {doing} with the PACS at {self.url}")
        try:
            return _in_reactor(lambda: self._request(method, path, accept, limit, left, **kwargs), left)
        except Exception as failure:
            problem = self._failed(failure, doing, limit)
        if isinstance(problem, TimedOut) and late:
            problem = TimedOut(f"{problem}; {late}")
        raise problem

    async def _request(self, method: str, path: str, accept: str, limit: int, left: float, **kwargs) -> tuple:
        from twisted.internet import reactor

        if self._http is None:
            self._http = HttpClient(reactor, connect_timeout=self.deadline.seconds)
        client = self._http
        headers = {**self._headers, "Accept": accept, **kwargs.pop("headers", {})}
        progress = kwargs.pop("progress", None)
        chunks: deque[bytes] = deque()
        size = [0]

        def collect(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > limit:
                raise AnswerTooLarge(limit)  # the connection is dropped: the rest is never read
            chunks.append(data)
            if progress is not None:
                progress(size[0])

        async def exchange():
            response = await client.treq.request(method, self.url + path, headers=headers, **kwargs)
            kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1")
            await receive(response, collect)
            return response.code, kind, chunks

        attempt = defer.Deferred.fromCoroutine(exchange())
        attempt.addTimeout(left, reactor)
        return await attempt

    def _failed(self, failure: BaseException, doing: str, limit: int) -> Exception:
        cause = root_cause(failure)
        if isinstance(cause, AnswerTooLarge):
            return PacsUnreachable(f"the PACS at {self.url} sent more than {_size(limit)} {doing}; refused")
        if self.deadline.left() <= 0 or isinstance(cause, (defer.TimeoutError, defer.CancelledError, TimeoutError)):
            return TimedOut(f"the PACS at {self.url} timed out {doing}: no whole answer within {self.deadline}")
        if isinstance(cause, error.DNSLookupError):
            return PacsUnreachable(f"the PACS at {self.url} could not be reached {doing} (unknown host)")
        if isinstance(cause, (error.ConnectError, SSL.Error)):
            return PacsUnreachable(f"the PACS at {self.url} could not be reached {doing} ({type(cause).__name__})")
        return PacsUnreachable(f"the PACS at {self.url} stopped answering {doing} ({type(cause).__name__})")

    def _status(self, status: int, doing: str) -> None:
        if status < 400:
            return
        if status in (401, 403):
            given = "the credentials were refused" if "Authorization" in self._headers else "it needs credentials"
            raise PacsRefused(
                f"the PACS at {self.url} answered HTTP {status} {doing}: {given} ({self.credentials_hint})"
            )
        if status == 404:
            raise PacsRefused(f"the PACS at {self.url} answered HTTP 404 {doing}: no such resource")
        if status >= 500:
            raise PacsUnreachable(f"the PACS at {self.url} failed {doing} (HTTP {status})")
        raise PacsRefused(f"the PACS at {self.url} refused {doing} (HTTP {status})")

    def _json(self, chunks: deque, doing: str):
        try:
            return untrusted_json.loads(b"".join(chunks).decode("utf-8") or "[]")
        except ValueError as error:  # UnicodeDecodeError included
            problem = str(error) if "nested" in str(error) else "not JSON"
        raise PacsUnreachable(f"the PACS at {self.url} sent an answer that could not be read {doing} ({problem})")

    # ---- QIDO-RS ----------------------------------------------------------------------------------

    def series_of(self, study: str) -> list[SeriesFound]:
        """The study's series; PacsRefused when the PACS has no such study."""
        doing = f"searching study {study}"
        path = f"/studies/{quote(check_uid(study, '--study'))}/series?includefield=00201209"
        status, _, chunks = self._exchange("GET", path, doing, accept=QIDO_ACCEPT, limit=JSON_LIMIT)
        self._status(status, doing)
        answer = self._json(chunks, doing) if status != 204 else []
        answer = [answer] if isinstance(answer, dict) else answer  # some PACSs answer one dataset bare
        if not isinstance(answer, list):
            raise PacsUnreachable(f"the PACS at {self.url} sent an answer that could not be read {doing}")
        found = []
        for attributes in answer:
            uid = _text(attributes, "0020000E")
            count = _value(attributes, "00201209")
            if uid and UID.fullmatch(uid) and len(uid) <= 64:
                number = int(count) if isinstance(count, (int, str)) and str(count).isdigit() else None
                found.append(SeriesFound(uid, _text(attributes, "00080060"), _text(attributes, "0008103E"), number))
        if not found:
            raise PacsRefused(f"the PACS at {self.url} has no study {study} (or it holds no series)")
        return found

    def choose(self, study: str, series: str | None = None, modality: str | None = None) -> SeriesFound:
        """The one image series meant: --series if given, else the study's only image series (of --modality)."""
        found = self.series_of(study)
        if series:
            for candidate in found:
                if candidate.uid == series:
                    if candidate.modality.upper() in NOT_IMAGES:
                        raise PacsRefused(
                            f"series {series} is a {candidate.modality} series, not an image series; "
                            "expected the CT, MR, ... series to segment"
                        )
                    return candidate
            raise PacsRefused(f"study {study} has no series {series}; it holds {_listed(found)}")
        images = [s for s in found if s.modality.upper() not in NOT_IMAGES]
        if modality:
            images = [s for s in images if s.modality.upper() == modality.upper()]
        if len(images) == 1:
            return images[0]
        what = f"{modality.upper()} series" if modality else "image series"
        if not images:
            raise PacsRefused(f"study {study} holds no {what}; it holds {_listed(found)}")
        raise PacsRefused(f"study {study} holds {len(images)} {what}: {_listed(images)}; choose one with --series")

    # ---- WADO-RS ----------------------------------------------------------------------------------

    def retrieve(self, study: str, series: str, progress: Callable[[int], None] | None = None) -> list[bytes]:
        """Every instance of the series as the PACS stores it, in arrival order (they are sorted later).

        `progress(bytes so far)` is called from the reactor thread while the answer arrives.
        """
        doing = f"retrieving series {series}"
        path = f"/studies/{quote(check_uid(study, '--study'))}/series/{quote(check_uid(series, '--series'))}"
        status, kind, chunks = self._exchange(
            "GET", path, doing, accept=WADO_ACCEPT, limit=self.max_bytes, progress=progress
        )
        self._status(status, doing)
        if not kind.lower().startswith("multipart/related"):
            raise PacsUnreachable(f"the PACS at {self.url} did not answer {doing} with DICOM instances")
        try:
            # annotated as a requests.Response; the decoder reads only what _Received offers
            received = cast("Response", _Received(kind, chunks))
            instances = [bytes(part) for part in self._multipart._decode_multipart_message(received, True)]
        except (ValueError, KeyError):
            raise PacsUnreachable(f"the PACS at {self.url} sent an answer that could not be read {doing}") from None
        if not instances:
            raise PacsRefused(f"the PACS at {self.url} sent no instances {doing}")
        return instances

    # ---- STOW-RS ----------------------------------------------------------------------------------

    def store(self, study: str, instances: list[bytes], what: str = "the segmentation") -> None:
        """Store the instances in one STOW-RS request, so a refusal stores none of them (where the PACS allows)."""
        doing = f"storing {what}"
        content_type = f'multipart/related; type="application/dicom"; boundary="{_BOUNDARY}"'
        body = self._multipart._encode_multipart_message(instances, content_type)
        status, _, chunks = self._exchange(
            "POST",
            f"/studies/{quote(check_uid(study, '--study'))}",
            doing,
            accept="application/dicom+json",
            limit=STOW_ANSWER_LIMIT,
            late=f"it may have stored {what}: look in study {study} before running the command again",
            data=body,
            headers={"Content-Type": content_type},
        )
        self._status(status, doing)
        try:
            answer = untrusted_json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            answer = {}
        failed = _value(answer, _STOW_FAILED) if isinstance(answer, dict) else None
        if failed is not None:
            reason = _value(failed, "00081197") if isinstance(failed, dict) else None  # FailureReason
            shown = f" (failure reason {reason})" if isinstance(reason, (int, str)) else ""
            raise PacsRefused(f"the PACS at {self.url} refused to store {what}{shown}")


def _in_reactor(make, left: float):
    """Run make() (a coroutine factory) in the reactor thread (crochet, as the blocking client) and wait for it.

    The coroutine ends itself at the deadline; the wait here has a margin past it only so that a reactor
    that never answers cannot hold the caller.
    """
    import crochet

    crochet.setup()  # once per process; later calls do nothing

    @crochet.run_in_reactor
    def start():
        return defer.Deferred.fromCoroutine(make())

    eventual = start()
    try:
        return eventual.wait(left + 5.0)
    except crochet.TimeoutError:
        eventual.cancel()
        raise TimeoutError from None


def _listed(found: list[SeriesFound]) -> str:
    shown = ", ".join(s.describe() for s in found[:8])
    return shown + (f" and {len(found) - 8} more" if len(found) > 8 else "")


def _size(count: int) -> str:
    return f"{count / 1024**3:g} GiB" if count >= 1024**3 else f"{count / 1024**2:g} MiB"
