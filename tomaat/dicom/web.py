"""A hospital PACS over DICOMweb: find a series (QIDO-RS), fetch its instances (WADO-RS), store SEGs (STOW-RS).

dicomweb-client speaks the protocol (URLs, UIDs, multipart, retries, sessions), but its retrieve and store
calls parse and write DICOM with pydicom in the calling process. A PACS's files are untrusted, and this
process can read the user's files, so only the raw parts are taken here (its `_http_get` and
`_decode_multipart_message`, `_encode_multipart_message` and `_http_post`: internals of the pinned
release, see pyproject.toml) and handed on as bytes to the confined decoders (tomaat/dicom/series.py).
The PACS's JSON answers are read with the json module, never into DICOM objects.

Credentials go into the session only: they are never printed, logged or put in a message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import requests

from ..client.errors import ConnectionFailed, ValidationError

# Series that are not images a service can take, as QIDO names their modality.
NOT_IMAGES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC", "OT"})
DEFAULT_MAX_BYTES = 8 * 1024**3  # a 2,000-slice 1024^2 series; past this a PACS's answer is refused
_STOW_FAILED = "00081198"  # FailedSOPSequence
_BOUNDARY = "tomaat-0c3b5f9e2d1a4786"


class PacsUnreachable(ConnectionFailed):
    """The PACS could not be reached or stopped answering (exit status 1)."""


class PacsRefused(ValidationError):
    """The PACS refused what was asked, or has no such study or series (exit status 2)."""


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


def session(user: str | None = None, password: str | None = None, token: str | None = None) -> requests.Session:
    """A requests session carrying basic or bearer authentication (never both)."""
    made = requests.Session()
    if token:
        made.headers["Authorization"] = f"Bearer {token}"
    elif user is not None:
        made.auth = (user, password or "")
    return made


class Pacs:
    """One DICOMweb service. Every failure is a PacsUnreachable or PacsRefused whose message names the PACS."""

    def __init__(self, url: str, auth: requests.Session | None = None, timeout: float = 60.0, max_bytes: int = 0):
        from dicomweb_client.api import DICOMwebClient

        self.url = url.rstrip("/")
        self.max_bytes = max_bytes or DEFAULT_MAX_BYTES
        try:
            self._client = DICOMwebClient(self.url, session=auth or requests.Session(), timeout=timeout)
        except ValueError as error:
            raise PacsRefused(f"--dicomweb {url!r} is not a DICOMweb URL: {error}") from None
        self._client.set_http_retry_params(max_attempts=2, wait_exponential_multiplier=200)

    # ---- errors -----------------------------------------------------------------------------------

    def _failed(self, error: Exception, doing: str) -> Exception:
        if isinstance(error, requests.HTTPError) and error.response is not None:
            status = error.response.status_code
            if status in (401, 403):
                given = "the credentials were refused" if self._has_credentials else "it needs credentials"
                return PacsRefused(
                    f"the PACS at {self.url} answered HTTP {status} {doing}: {given} "
                    "(--user/--password or --token, or TOMAAT_DICOMWEB_USER/_PASSWORD/_TOKEN)"
                )
            if status == 404:
                return PacsRefused(f"the PACS at {self.url} answered HTTP 404 {doing}: no such resource")
            if status >= 500:
                return PacsUnreachable(f"the PACS at {self.url} failed {doing} (HTTP {status})")
            return PacsRefused(f"the PACS at {self.url} refused {doing} (HTTP {status})")
        if isinstance(error, requests.Timeout):
            return PacsUnreachable(f"the PACS at {self.url} did not answer {doing} in time")
        if isinstance(error, requests.RequestException):
            return PacsUnreachable(f"the PACS at {self.url} could not be reached {doing} ({type(error).__name__})")
        return PacsUnreachable(f"the PACS at {self.url} sent an answer that could not be read {doing}")

    @property
    def _has_credentials(self) -> bool:
        session = self._client._session
        return session.auth is not None or "Authorization" in session.headers

    def _call(self, doing: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (PacsRefused, PacsUnreachable):
            raise
        except (requests.RequestException, ValueError, KeyError, TypeError) as error:
            raise self._failed(error, doing) from None

    # ---- QIDO-RS ----------------------------------------------------------------------------------

    def series_of(self, study: str) -> list[SeriesFound]:
        """The study's series; PacsRefused when the PACS has no such study."""
        doing = f"searching study {study}"
        answer = self._call(doing, self._client.search_for_series, study, fields=["NumberOfSeriesRelatedInstances"])
        if not isinstance(answer, list):
            raise PacsUnreachable(f"the PACS at {self.url} sent an answer that could not be read {doing}")
        found = []
        for attributes in answer:
            uid = _text(attributes, "0020000E")
            count = _value(attributes, "00201209")
            if uid:
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

    def retrieve(self, study: str, series: str, progress: Callable[[int, int], None] | None = None) -> list[bytes]:
        """Every instance of the series as the PACS's own bytes, in arrival order (they are sorted later)."""
        from dicomweb_client.web import _Transaction

        doing = f"retrieving series {series}"

        def parts() -> Iterator[bytes]:
            url = self._client._get_series_url(_Transaction.RETRIEVE, study, series)
            accept = 'multipart/related; type="application/dicom"'
            response = self._client._http_get(url, headers={"Accept": accept}, stream=True)
            if not response.headers.get("Content-Type", "").lower().startswith("multipart/related"):
                raise PacsUnreachable(f"the PACS at {self.url} did not answer {doing} with DICOM instances")
            response.iter_content = _capped(response.iter_content, self.max_bytes, self.url)
            yield from self._client._decode_multipart_message(response, stream=True)

        instances = [bytes(part) for part in self._call(doing, lambda: list(_counting(parts(), progress)))]
        if not instances:
            raise PacsRefused(f"the PACS at {self.url} sent no instances {doing}")
        return instances

    # ---- STOW-RS ----------------------------------------------------------------------------------

    def store(self, study: str, instances: list[bytes]) -> None:
        """Store the instances in one STOW-RS request, so a refusal stores none of them (where the PACS allows)."""
        from dicomweb_client.web import _Transaction

        doing = "storing the segmentation"
        url = self._client._get_studies_url(_Transaction.STORE, study)
        content_type = f'multipart/related; type="application/dicom"; boundary="{_BOUNDARY}"'

        def post():
            body = self._client._encode_multipart_message(instances, content_type)
            return self._client._http_post(
                url, body, headers={"Content-Type": content_type, "Accept": "application/dicom+json"}
            )

        response = self._call(doing, post)
        try:
            answer = json.loads(response.content[: 1 << 20] or b"{}")
        except ValueError:
            answer = {}
        failed = _value(answer, _STOW_FAILED) if isinstance(answer, dict) else None
        if failed is not None:
            reason = _value(failed, "00081197") if isinstance(failed, dict) else None  # FailureReason
            shown = f" (failure reason {reason})" if isinstance(reason, (int, str)) else ""
            raise PacsRefused(f"the PACS at {self.url} refused to store the segmentation{shown}")


def _listed(found: list[SeriesFound]) -> str:
    shown = ", ".join(s.describe() for s in found[:8])
    return shown + (f" and {len(found) - 8} more" if len(found) > 8 else "")


def _capped(iter_content, limit: int, url: str):
    """requests' iter_content, refusing an answer longer than limit bytes (a PACS is not trusted to stop)."""

    def capped(chunk_size=1, decode_unicode=False):
        total = 0
        for chunk in iter_content(chunk_size, decode_unicode):
            total += len(chunk)
            if total > limit:
                raise PacsRefused(f"the PACS at {url} sent more than {limit} bytes for one series; refused")
            yield chunk

    return capped


def _counting(parts: Iterator[bytes], progress: Callable[[int, int], None] | None) -> Iterator[bytes]:
    count = size = 0
    for part in parts:
        count, size = count + 1, size + len(part)
        if progress is not None:
            progress(count, size)
        yield part
