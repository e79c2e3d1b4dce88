"""DICOM instances into one volume, or the one reason they are not one: run in the DICOM decoder only.

A PACS hands over whatever a series holds: localizers at another orientation, a missing or a
repeated slice, a gantry tilt, a SEG or an SR filed beside the images. Stacking such files anyway
puts voxels where the patient was not, so each of these is refused with what was found and what
was expected. Slices are ordered by their position along the slice normal, the one order the
geometry defines; arrival order and InstanceNumber say nothing about where a slice lies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from . import pixels
from .pixels import DECODABLE

NOT_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a segmentation",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7": "a segmentation",  # Label Map Segmentation Storage
}
ORIENTATION_TOLERANCE = 1e-4  # direction cosines
SPACING_TOLERANCE = 1e-4  # mm, in-plane pixel spacing between slices
DUPLICATE = 0.01  # mm: slices closer than this along the normal are the same slice twice
_DEFER = 4096  # bytes: pixel data stays in the file until the slice order is known
MAX_VOLUME_BYTES = 4 << 30  # the rescaled volume, as series.MAX_VOXEL_BYTES


Refused = pixels.Refused  # files that are not one volume; the message, complete, goes to the user


@dataclass
class Stack:
    datasets: list  # in slice order
    order: list[int]  # input index of each slice
    rows: int
    columns: int
    spacing: tuple[float, float, float]  # x (columns), y (rows), z (slices)
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # SimpleITK's: row-major, columns = row cosine, column cosine, normal


def mm(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def read(path: str, name: str) -> pydicom.Dataset:
    """One instance, checked for what a slice of a volume needs; pixel data left in the file."""
    try:
        dataset = pydicom.dcmread(path, force=False, defer_size=_DEFER)
    except InvalidDicomError:
        raise Refused(
            f"{name}: not a DICOM file (no 'DICM' marker after a 128-byte preamble); "
            "expected DICOM Part 10 files, one image instance each"
        ) from None
    except MemoryError:
        raise Refused(
            f"{name}: needs more memory than the decoder may use to read (a deflated file that inflates without "
            "end?); expected a DICOM file of a slice"
        ) from None
    except Exception as error:  # noqa: BLE001 - a header pydicom cannot walk is a corrupt file
        raise Refused(
            f"{name}: not readable as DICOM ({type(error).__name__}); the file is truncated or corrupt"
        ) from None
    try:
        _check(dataset, name)
    except Refused:
        raise
    except Exception as error:  # noqa: BLE001 - a value pydicom cannot convert is a corrupt header
        raise Refused(
            f"{name}: a header value that cannot be read ({type(error).__name__}: {str(error)[:160]})"
        ) from None
    return dataset


def _check(dataset: pydicom.Dataset, name: str) -> None:
    sop_class = pydicom.uid.UID(str(dataset.get("SOPClassUID", "")))
    kind = NOT_IMAGES.get(sop_class)
    if kind:
        raise Refused(f"{name}: {kind} ({sop_class.name}), not an image; expected the images of one series")
    if "PixelData" not in dataset:
        what = sop_class.name if sop_class else "no SOPClassUID either: a truncated or corrupt file?"
        raise Refused(
            f"{name}: no image in it (no Pixel Data; {what}); expected image instances such as CT or MR slices"
        )
    frames = dataset.get("NumberOfFrames", 1)
    if _integer(frames, 1) != 1:
        raise Refused(
            f"{name}: {frames} frames in one instance (multi-frame, e.g. Enhanced CT or MR): not supported yet; "
            "expected one slice per file"
        )
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax not in DECODABLE:
        syntax = pydicom.uid.UID(str(syntax or ""))
        raise Refused(
            f"{name}: transfer syntax {syntax.name} ({syntax}) is not one this reader decodes; expected "
            "uncompressed, deflated, RLE, JPEG (baseline, extended, lossless), JPEG-LS or JPEG 2000 pixel data: "
            "ask the PACS for one of these"
        )
    if _integer(dataset.get("SamplesPerPixel", 1), 0) != 1:
        raise Refused(
            f"{name}: a colour image ({dataset.get('PhotometricInterpretation', '?')}, "
            f"{dataset.get('SamplesPerPixel')} samples per pixel); expected a grayscale image"
        )
    if "ModalityLUTSequence" in dataset:
        raise Refused(
            f"{name}: a Modality LUT Sequence maps its values: not supported; expected RescaleSlope/Intercept"
        )
    missing = [
        key for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if not _numbers(dataset, key)
    ]
    # Series and instance UIDs are optional: an anonymiser may remove them, and the geometry still says
    # whether the files are one volume (series.write_seg says why such a series gets no SEG).
    missing += [key for key in ("Rows", "Columns") if not dataset.get(key)]
    if missing:
        raise Refused(
            f"{name}: no {', no '.join(missing)}; expected ImagePositionPatient, ImageOrientationPatient, "
            "PixelSpacing, Rows and Columns in every slice"
        )
    for key, count in (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6), ("PixelSpacing", 2)):
        values = _numbers(dataset, key)
        if len(values) != count or not all(math.isfinite(v) for v in values):
            raise Refused(f"{name}: {key} is {values}; expected {count} finite numbers")
    if min(_numbers(dataset, "PixelSpacing")) <= 0:
        raise Refused(f"{name}: PixelSpacing is {_numbers(dataset, 'PixelSpacing')}; expected two positive numbers")
    slope, intercept = _numbers(dataset, "RescaleSlope") or [1.0], _numbers(dataset, "RescaleIntercept") or [0.0]
    if (
        len(slope) != 1
        or len(intercept) != 1
        or not math.isfinite(intercept[0])
        or not math.isfinite(slope[0])
        or not slope[0]
    ):
        raise Refused(
            f"{name}: RescaleSlope {slope}, RescaleIntercept {intercept}; expected one finite number each, the slope not 0"
        )


def _numbers(dataset: pydicom.Dataset, key: str) -> list[float]:
    value = dataset.get(key)
    if value is None or value == "":
        return []
    try:
        return [float(v) for v in (value if isinstance(value, (list, MultiValue)) else [value])]
    except (TypeError, ValueError):
        return [math.nan]


def _integer(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def stack(datasets: list, names: list[str]) -> Stack:
    """The slices in order along their normal and the volume's geometry; Refused when they are not one volume."""
    series: dict[str, list[str]] = {}
    for dataset, name in zip(datasets, names, strict=True):
        series.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append(name)
    if len(series) > 1:
        counts = ", ".join(
            f"{uid or 'no SeriesInstanceUID'} in {len(files)} file(s)" for uid, files in list(series.items())[:5]
        )
        raise Refused(f"the files hold {len(series)} series ({counts}); expected the files of one series")
    if len(datasets) == 1:
        raise Refused(f"{names[0]}: one slice: expected a volume of at least 2 slices")
    seen: dict[str, str] = {}
    for dataset, name in zip(datasets, names, strict=True):
        uid = str(dataset.get("SOPInstanceUID", ""))
        if not uid:
            continue  # a slice twice is then found by its position
        if uid in seen:
            raise Refused(
                f"{name} and {seen[uid]} are the same instance (SOPInstanceUID {uid}); expected each slice once"
            )
        seen[uid] = name
    first, name0 = datasets[0], names[0]
    size0 = (int(first.Rows), int(first.Columns))
    orientation0 = np.array(_numbers(first, "ImageOrientationPatient"))
    spacing0 = np.array(_numbers(first, "PixelSpacing"))
    for dataset, name in zip(datasets[1:], names[1:], strict=True):
        size = (int(dataset.Rows), int(dataset.Columns))
        if size != size0:
            raise Refused(
                f"{name}: {size[1]} x {size[0]} pixels, but {name0} has {size0[1]} x {size0[0]}; "
                "expected one image size for the whole series"
            )
        spacing = np.array(_numbers(dataset, "PixelSpacing"))
        if np.abs(spacing - spacing0).max() > SPACING_TOLERANCE:
            raise Refused(
                f"{name}: PixelSpacing {spacing.tolist()}, but {name0} has {spacing0.tolist()}; "
                "expected one pixel spacing for the whole series"
            )
        orientation = np.array(_numbers(dataset, "ImageOrientationPatient"))
        if np.abs(orientation - orientation0).max() > ORIENTATION_TOLERANCE:
            raise Refused(
                f"{name}: ImageOrientationPatient {orientation.tolist()}, but {name0} has {orientation0.tolist()}: "
                "mixed orientations (a localizer?); expected one orientation for the whole series"
            )
        # Optional for the volume (GDCM-written series often lack it); a SEG needs it (series.write_seg says so)
        frame, frame0 = str(dataset.get("FrameOfReferenceUID", "")), str(first.get("FrameOfReferenceUID", ""))
        if frame != frame0:
            raise Refused(
                f"{name}: FrameOfReferenceUID {frame or 'missing'}, but {name0} has "
                f"{frame0 or 'none'}; expected one frame of reference for the whole series"
            )
    row, column = orientation0[:3], orientation0[3:]
    if (
        abs(np.linalg.norm(row) - 1) > ORIENTATION_TOLERANCE
        or abs(np.linalg.norm(column) - 1) > ORIENTATION_TOLERANCE
        or abs(row @ column) > ORIENTATION_TOLERANCE
    ):
        raise Refused(
            f"{name0}: ImageOrientationPatient {orientation0.tolist()} is not two perpendicular unit vectors; "
            "expected row and column direction cosines"
        )
    normal = np.cross(row, column)
    corners = np.array([_numbers(d, "ImagePositionPatient") for d in datasets])
    along = corners @ normal
    order = sorted(range(len(datasets)), key=lambda i: (along[i], i))
    positions = along[order]
    gaps = np.diff(positions)
    same = np.flatnonzero(gaps < DUPLICATE)
    if len(same):
        k = int(same[0])
        a, b = order[k], order[k + 1]
        raise Refused(
            f"{names[a]} and {names[b]} lie at the same slice position ({mm(positions[k])} mm along the normal); "
            "expected each position once (the series holds a slice twice, or two acquisitions)"
        )
    step = float(np.median(gaps))
    tolerance = max(0.01, 0.01 * step)
    wrong = np.flatnonzero(np.abs(gaps - step) > tolerance)
    if len(wrong):
        pairs = "; ".join(
            f"{mm(gaps[k])} mm between {names[order[k]]} at {mm(positions[k])} mm and "
            f"{names[order[k + 1]]} at {mm(positions[k + 1])} mm"
            for k in wrong[:5]
        )
        more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""
        missing = " (a missing slice?)" if (gaps[wrong] > 1.5 * step).any() else ""
        raise Refused(
            f"uneven slice spacing{missing}: {pairs}{more}; expected {mm(step)} mm between every pair of "
            "neighbouring slices, with none missing"
        )
    offsets = corners[order] - corners[order[0]] - np.outer(positions - positions[0], normal)
    drift = np.linalg.norm(offsets, axis=1)
    if drift.max() > tolerance:
        k = int(drift.argmax())
        raise Refused(
            f"the slices are sheared (gantry tilt?): {names[order[k]]} lies {mm(drift[k])} mm off the line through "
            f"{names[order[0]]} along the slice normal; expected slices stacked along their normal"
        )
    z = float(positions[-1] - positions[0]) / (len(datasets) - 1)
    first = datasets[order[0]]
    left, posterior, superior = (float(v) for v in corners[order[0]])  # three: `corners @ normal` took them
    return Stack(
        datasets=[datasets[i] for i in order],
        order=order,
        rows=size0[0],
        columns=size0[1],
        spacing=(float(spacing0[1]), float(spacing0[0]), z),
        origin=(left, posterior, superior),
        direction=tuple(float(v) for v in np.column_stack([row, column, normal]).ravel()),
    )


def voxels(volume: Stack, names: list[str]) -> np.ndarray:
    """The stored values through each slice's rescale: int16 or int32 where every slope and intercept is whole, else float32."""
    rescales = [
        ((_numbers(d, "RescaleSlope") or [1.0])[0], (_numbers(d, "RescaleIntercept") or [0.0])[0])
        for d in volume.datasets
    ]
    whole = all(s.is_integer() and i.is_integer() for s, i in rescales)
    size = len(volume.datasets) * volume.rows * volume.columns * 4
    if size > MAX_VOLUME_BYTES:
        raise Refused(
            f"the headers claim {volume.columns} x {volume.rows} x {len(volume.datasets)} voxels "
            f"({size / 2**30:.1f} GiB as 32 bits); expected at most {MAX_VOLUME_BYTES >> 30} GiB"
        )
    out = np.empty((len(volume.datasets), volume.rows, volume.columns), np.int32 if whole else np.float32)
    for k, (dataset, (slope, intercept)) in enumerate(zip(volume.datasets, rescales, strict=True)):
        name = names[volume.order[k]]
        try:
            stored = pixels.stored(dataset, name)
        except Refused:
            raise
        except MemoryError:
            raise Refused(f"{name}: its pixel data needs more memory than the decoder may use") from None
        except Exception as error:  # noqa: BLE001 - pixel data the decoder cannot unpack is corrupt
            text = " ".join(str(error).split())[:160]  # pydicom's list of plugin failures spans lines
            raise Refused(f"{name}: its pixel data cannot be decoded ({type(error).__name__}: {text})") from None
        if whole:
            values = stored.astype(np.int64) * int(slope) + int(intercept)
            if values.size and (values.min() < -(2**31) or values.max() >= 2**31):
                raise Refused(f"{name}: rescaled values beyond 32-bit integers; expected CT/MR-like values")
            out[k] = values
        else:
            out[k] = stored.astype(np.float64) * slope + intercept
        del dataset.PixelData  # the slice is in `out`: a series is held once, not twice
    if whole and out.size and -(2**15) <= out.min() and out.max() < 2**15:
        return out.astype(np.int16)
    return out
