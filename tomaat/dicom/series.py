"""A DICOM series as a SimpleITK image, and a label volume on it as a DICOM SEG, without parsing DICOM here.

Files from a PACS are untrusted bytes: this process only hands them, unread, to the confined DICOM
decoders (decoder_process.py, through tomaat.files.confined's pool) and distrusts what comes back:
JSON of the expected shape with UIDs and geometry checked, voxels as a plain file of exactly the
announced size, a SEG as bytes it passes on unparsed. The decoders' refusals reach the user as
DicomError, their text stripped of controls and cut short, since a decoder taken over by a file
could say anything.
"""

from __future__ import annotations

import atexit
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..files import confined
from ..protocol.elements import Segment
from ..protocol.text import CONTROL, printable
from .errors import DicomError

MAX_FILES = 5000  # the decoder's answer names each instance, and answers are capped at 1 MiB
MAX_VOXEL_BYTES = 4 << 30
MAX_SEG_BYTES = 4 << 30
GRID_MM = 1e-4  # spacing and origin, in mm
GRID_DIRECTION = 1e-6
MANUFACTURER = "TOMAAT"

POOL = confined.DecoderPool(size=2, timeout=300.0, module="tomaat.dicom.decoder_process")
atexit.register(POOL.close)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_DTYPES = ("<i2", "<i4", "<f4")
_INTEGER_PIXELS = {
    sitk.sitkUInt8,
    sitk.sitkInt8,
    sitk.sitkUInt16,
    sitk.sitkInt16,
    sitk.sitkUInt32,
    sitk.sitkInt32,
    sitk.sitkUInt64,
    sitk.sitkInt64,
}
_FAILED = {
    "stopped": "stopped on these files (a crash, or more memory than it may use)",
    "nonsense": "answered nonsense on these files",
    "refused": "could not read these files",
}


@dataclass(frozen=True, eq=False)
class DicomSeries:
    """One series as a volume; `files` and `order` keep what the SEG step sends to the decoder again."""

    image: sitk.Image
    study_uid: str  # "" when the slices name none (an anonymiser removed them): a volume still, but no SEG
    series_uid: str  # "" likewise
    frame_of_reference_uid: str  # "" when the slices name none: a volume still, but no SEG can be made on it
    modality: str
    description: str
    instances: tuple[str, ...]  # SOPInstanceUID of each slice ("" where none), in slice order (image z index)
    sop_classes: tuple[str, ...]  # SOPClassUID of each slice, in slice order
    files: tuple[bytes, ...] = field(repr=False)  # the instances' bytes, in slice order
    order: tuple[int, ...] = field(repr=False)  # the index, in the files given, of each slice


def read_series(files: Sequence[bytes], *, names: Sequence[str] | None = None) -> DicomSeries:
    """The series the files (one DICOM instance each) hold, read in a confined decoder.

    `names` (one per file, e.g. paths) are what refusals call the files; else "file 3 of 12".
    """
    files = [bytes(data) for data in files]
    if not files:
        raise DicomError("no files: expected the DICOM files of one series")
    if len(files) > MAX_FILES:
        raise DicomError(f"{len(files)} files: expected at most {MAX_FILES} slices in one series")
    if names is not None and len(names) != len(files):
        raise ValueError(f"{len(names)} names for {len(files)} files")
    message = {"op": "series", "names": [str(n) for n in names] if names is not None else None}
    answer, decoder = _run(message, {f"dicom-{i}": data for i, data in enumerate(files)})
    try:
        return _series(answer, decoder, files)
    except (confined.DecodeFailed, KeyError, TypeError, ValueError, RuntimeError):
        raise DicomError("the DICOM decoder answered nonsense on these files") from None
    finally:
        POOL.release(decoder)


def write_seg(
    series: DicomSeries,
    label: sitk.Image,
    segments: Sequence[Segment] | None = None,
    *,
    series_uid: str | None = None,
    series_description: str,
    series_number: int,
    service_name: str,
    service_version: str,
) -> bytes:
    """The DICOM SEG (a Part 10 file's bytes) of `label` on `series`, built by highdicom in a confined decoder.

    Segments (tomaat.Segment, as a LabelVolume declares them) are numbered 1..n in the order given,
    then the label values present that none describes, as "label N" (docs/writing-an-app.md). A
    described segment with no voxel is kept: a SEG may say a structure was looked for and not found.
    `series_uid` is the SEG's SeriesInstanceUID (a new one if None), for a caller that must know it
    before storing. The bytes are not parsed here.
    """
    missing = [
        what
        for what, absent in (
            ("StudyInstanceUID", not series.study_uid),
            ("SeriesInstanceUID", not series.series_uid),
            ("SOPInstanceUID", not all(series.instances)),
        )
        if absent
    ]
    if missing:
        # A SEG names its study and each source instance; UIDs made up here would name nothing a viewer has.
        raise DicomError(
            f"the series' files carry no {' and no '.join(missing)} (removed by an anonymiser?), which a DICOM SEG "
            "must reference; expected a series whose files keep their UIDs"
        )
    if not series.frame_of_reference_uid:
        raise DicomError(
            "the series has no FrameOfReferenceUID, which a DICOM SEG must share with its images; "
            "expected a series that names its frame of reference"
        )
    array = _label_array(series, label)
    present = np.zeros(1 << 16, bool)
    for plane in array:  # one slice at a time: a count over the whole volume would need 8 bytes a voxel
        present[: int(plane.max()) + 1] |= np.bincount(plane.ravel()) > 0
    values = [int(v) for v in np.flatnonzero(present[1:]) + 1]
    described = _check_segments(segments or ())
    segments = [*(segments or ()), *(Segment(v, f"label {v}") for v in values if v not in described)]
    if not segments:
        raise DicomError("the label has no non-zero voxel: nothing to store; expected labelled voxels, or segments")
    if series_uid is not None and (
        not isinstance(series_uid, str) or len(series_uid) > 64 or not _UID.fullmatch(series_uid)
    ):
        raise DicomError(f"series UID {series_uid!r}: expected a DICOM UID (digits and dots, at most 64)")
    for what, text in (("series description", series_description), ("service name", service_name)):
        _check_text(what, text, 64)
    if service_version:  # a service need not declare one; the SEG's algorithm version must say something
        _check_text("service version", service_version, 64)
    if not isinstance(series_number, int) or not 1 <= series_number < 2**31:
        raise DicomError(f"series number {series_number!r}: expected a whole number from 1 to 2147483647")
    wide = max(values, default=0) >= 256
    raw = array.astype("<u2" if wide else "u1", copy=False).tobytes()
    message = {
        "op": "seg",
        "names": None,
        "order": list(range(len(series.files))),
        "label_dtype": "<u2" if wide else "|u1",
        "segments": [
            {
                "number": number,
                "value": segment.value,
                "name": segment.name,
                "category": list(segment.category),
                "type": list(segment.type),
            }
            for number, segment in enumerate(segments, 1)
        ],
        "params": {
            "series_uid": series_uid,
            "series_number": series_number,
            "series_description": series_description,
            "manufacturer": MANUFACTURER,
            "manufacturer_model_name": service_name,
            "software_versions": [f"tomaat {__version__}", *([service_version] if service_version else [])],
            "device_serial_number": "unspecified",
            "algorithm_name": service_name,
            "algorithm_version": service_version or "unspecified",
        },
    }
    files = {f"dicom-{i}": data for i, data in enumerate(series.files)}
    answer, decoder = _run(message, {**files, "label": raw})
    try:
        size = answer.get("size")
        if not isinstance(size, int) or not 132 <= size <= MAX_SEG_BYTES:
            raise confined.DecodeFailed("nonsense")
        mapped = confined._output(decoder, size)
        assert mapped is not None  # size >= 132, checked above
        try:
            data = bytes(mapped)
        finally:
            mapped.close()
        if data[128:132] != b"DICM":
            raise confined.DecodeFailed("nonsense")
        return data
    except confined.DecodeFailed:
        raise DicomError("the DICOM decoder answered nonsense on these files") from None
    finally:
        POOL.release(decoder)


def _run(message: dict, files: dict[str, bytes]) -> tuple[dict, confined._Decoder]:
    """The decoder's answer to a request it did not refuse, and the decoder to release; DicomError otherwise."""
    try:
        answer, decoder = POOL.run(message, files=files)
    except confined.DecodeFailed as failure:
        if failure.reason == "timeout":
            raise DicomError(f"the DICOM decoder took longer than {POOL.timeout:g} s on these files") from None
        raise DicomError(f"the DICOM decoder {_FAILED.get(failure.reason, _FAILED['refused'])}") from None
    if answer.get("ok") is True:
        return answer, decoder
    POOL.release(decoder)
    refusal = answer.get("refused")
    if isinstance(refusal, str) and refusal:
        raise DicomError(" ".join(printable(refusal).split())[:1000])
    raise DicomError(f"the DICOM decoder {_FAILED['refused']} ({printable(str(answer.get('error')))[:80]})")


def _series(answer: dict, decoder: confined._Decoder, files: list[bytes]) -> DicomSeries:
    count = len(files)
    dtype, shape, order = answer["dtype"], answer["shape"], answer["order"]
    if dtype not in _DTYPES or not isinstance(shape, list) or len(shape) != 3:
        raise ValueError("dtype or shape")
    if shape[0] != count or not all(isinstance(n, int) and 1 <= n <= 65535 for n in shape[1:]):
        raise ValueError("shape")
    if not isinstance(order, list) or sorted(order) != list(range(count)) or not all(type(i) is int for i in order):
        raise ValueError("order")
    instances = answer["instances"]
    if not isinstance(instances, list) or len(instances) != count or not all(isinstance(i, dict) for i in instances):
        raise ValueError("instances")
    uids = tuple("" if item["uid"] == "" else _uid(item["uid"]) for item in instances)
    named = [uid for uid in uids if uid]
    if len(set(named)) != len(named):
        raise ValueError("duplicate instances")
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if size > MAX_VOXEL_BYTES:
        raise DicomError(f"the series holds {size} bytes of voxels; expected at most {MAX_VOXEL_BYTES}")
    spacing = _finite(answer["spacing"], 3)
    direction = _finite(answer["direction"], 9)
    if min(spacing) <= 0 or abs(np.linalg.det(np.reshape(direction, (3, 3)))) < 0.5:
        raise ValueError("geometry")
    mapped = confined._output(decoder, size)
    assert mapped is not None  # size > 0: there are files, and every other dimension was checked positive
    try:
        image = sitk.GetImageFromArray(np.frombuffer(mapped, dtype=dtype).reshape(shape))
    finally:
        mapped.close()
    image.SetSpacing(spacing)
    image.SetOrigin(_finite(answer["origin"], 3))
    image.SetDirection(direction)
    return DicomSeries(
        image=image,
        study_uid="" if answer["study_uid"] == "" else _uid(answer["study_uid"]),
        series_uid="" if answer["series_uid"] == "" else _uid(answer["series_uid"]),
        frame_of_reference_uid=_uid(answer["frame_of_reference_uid"]) if answer["frame_of_reference_uid"] else "",
        modality=_text(answer["modality"], 16),
        description=_text(answer["description"], 64),
        instances=uids,
        sop_classes=tuple(_uid(item["class"]) for item in instances),
        files=tuple(files[i] for i in order),
        order=tuple(order),
    )


def _uid(value) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _UID.fullmatch(value):
        raise ValueError("uid")
    return value


def _text(value, limit: int) -> str:
    if not isinstance(value, str):
        raise ValueError("text")
    return printable(value)[:limit]


def _finite(values, count: int) -> list[float]:
    if not isinstance(values, list) or len(values) != count:
        raise ValueError("numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError("numbers")
    return [float(v) for v in values]


def _label_array(series: DicomSeries, label: sitk.Image) -> np.ndarray:
    """The label's voxels (z, y, x), refused unless it lies exactly on the series' grid with values 0..65535."""
    image = series.image
    if not isinstance(label, sitk.Image):
        raise DicomError(f"the label is a {type(label).__name__}; expected a SimpleITK image on the series' grid")
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise DicomError(
            f"the label has {label.GetDimension()} dimensions and {label.GetNumberOfComponentsPerPixel()} "
            "components per voxel; expected a 3D scalar label volume"
        )
    if label.GetPixelID() not in _INTEGER_PIXELS:
        raise DicomError(f"the label's voxels are {label.GetPixelIDTypeAsString()}; expected integer label values")
    if label.GetSize() != image.GetSize():
        raise DicomError(
            f"the label is {' x '.join(map(str, label.GetSize()))} voxels, the series "
            f"{' x '.join(map(str, image.GetSize()))}; expected a label on exactly the series' grid"
        )
    for what, ours, theirs, tolerance, unit in (
        ("spacing", label.GetSpacing(), image.GetSpacing(), GRID_MM, " mm"),
        ("origin", label.GetOrigin(), image.GetOrigin(), GRID_MM, " mm"),
        ("direction", label.GetDirection(), image.GetDirection(), GRID_DIRECTION, ""),
    ):
        if max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) > tolerance:
            raise DicomError(
                f"the label's {what} {_show(ours)} differs from the series' {_show(theirs)} by more than "
                f"{tolerance:g}{unit}; expected a label on exactly the series' grid (resample it onto the image first)"
            )
    array = sitk.GetArrayViewFromImage(label)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= 1 << 16:
        raise DicomError(f"the label's values run from {low} to {high}; expected label values from 0 to 65535")
    return array.astype(np.uint16, copy=False) if array.dtype.itemsize > 2 or array.dtype.kind == "i" else array


def _show(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _check_text(what: str, text, limit: int) -> None:
    """DICOM's LO (and SH for limit 16): backslash separates values, controls are not text."""
    if not isinstance(text, str) or not text.strip():
        raise DicomError(f"{what} {text!r}: expected a non-empty text")
    if len(text) > limit or "\\" in text or CONTROL.search(text):
        raise DicomError(f"{what} {text[:80]!r}: expected at most {limit} characters, with no backslash or control")


def _check_segments(segments: Sequence[Segment]) -> list[int]:
    """The label values the segments describe, in order; DicomError for one a SEG cannot hold."""
    values = []
    for segment in segments:
        if not isinstance(segment, Segment):
            raise DicomError(f"segment {segment!r}: expected a tomaat.Segment")
        if isinstance(segment.value, bool) or not isinstance(segment.value, int) or not 1 <= segment.value < 1 << 16:
            raise DicomError(f"segment {segment.name!r}: label value {segment.value!r}; expected 1 to 65535")
        if segment.value in values:
            raise DicomError(f"label value {segment.value} is described twice; expected one segment per label value")
        _check_text(f"segment {segment.value}'s name", segment.name, 64)
        for what, code in (("category", segment.category), ("type", segment.type)):
            if not (isinstance(code, (tuple, list)) and len(code) == 3):
                raise DicomError(f"segment {segment.value}'s {what} {code!r}: expected (value, scheme, meaning)")
            for part, text, limit in zip(
                ("code value", "coding scheme", "code meaning"), code, (64, 16, 64), strict=True
            ):
                _check_text(f"segment {segment.value}'s {what} {part}", text, limit)
        values.append(segment.value)
    return values
