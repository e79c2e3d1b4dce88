"""Loading what a user points at (files, folders, arrays, objects) into the values the wire format carries.

Each loader ends in bytes or text ready for a form field, so the request can be
checked and encoded completely before the first byte is uploaded.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import RequestError
from ..files.scratch import write_then_bytes
from ..protocol import b64
from ..protocol import fiducials as wire_fiducials
from ..protocol.volumes import read_image, sniff_format, unwrap, write_image
from .errors import InputFileError

IMAGE_HELP = "an image file SimpleITK reads (NIfTI, MHA/MHD, NRRD, ...), a DICOM series folder, or a SimpleITK image"
FIDUCIALS_HELP = "a list of (x, y, z) points, 'x,y,z;...' text, or a Slicer .fcsv, .json or .csv file"
TRANSFORM_HELP = "an ITK transform file (.mat, .txt, .tfm, .h5), a displacement-field image, or a SimpleITK transform"


# ---- volumes -----------------------------------------------------------------------------------


def read_dicom_series(folder: str, where: str) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series:
        raise InputFileError(f"{where}: the folder {folder} holds no DICOM series; expected {IMAGE_HELP}")
    if len(series) > 1:
        raise InputFileError(
            f"{where}: the folder {folder} holds {len(series)} DICOM series ({', '.join(series)}); "
            "put the one to send in a folder of its own"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series[0]))
    return reader.Execute()


def read_volume(value, where: str) -> sitk.Image:
    """The image itself, for callers that want to look at it (geometry checks, the demo)."""
    if isinstance(value, sitk.Image):
        return value
    path = os.fspath(value)
    if os.path.isdir(path):
        return read_dicom_series(path, where)
    try:
        return sitk.ReadImage(path)
    except RuntimeError:
        raise InputFileError(f"{where}: {path} could not be read as an image; expected {IMAGE_HELP}") from None


class VolumeFile:
    """A volume ready to send: the file's own bytes where a server reads its format, else MHA.

    Raw bytes are kept only when they are one self-contained file the server
    recognises by content (a detached .mhd header is re-encoded), so a v2
    upload skips both re-encoding and base64.
    """

    def __init__(self, value, where: str):
        self.where = where
        self.raw: bytes | None = None
        self.format: str | None = None
        self.image: sitk.Image | None = None
        if isinstance(value, sitk.Image):
            self.image = value
            return
        if isinstance(value, (bytes, bytearray)):
            self._adopt(bytes(value))
            if self.raw is None:
                raise InputFileError(f"{where}: the bytes are not {IMAGE_HELP}")
            return
        path = os.fspath(value)
        if not os.path.exists(path):
            raise InputFileError(f"{where}: no such file or folder: {path}")
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                self._adopt(handle.read())
        if self.raw is None:
            self.image = read_volume(path, where)

    def _adopt(self, raw: bytes) -> None:
        if sniff_format(raw) is None:
            return
        try:
            self.raw, self.format = unwrap(raw, self.where)
        except RequestError:
            self.raw = None  # e.g. a detached .mhd header: read it here and send MHA instead

    @property
    def size(self) -> int:
        return len(self.raw) if self.raw is not None else 0

    def native(self) -> tuple[bytes, str]:
        """(bytes, format) for a binary v2 part."""
        if self.raw is not None:
            return self.raw, self.format
        return write_image(self.image, "mha"), "mha"

    def mha(self) -> bytes:
        """MHA bytes, what v1 servers read (after base64)."""
        if self.raw is not None and self.format == "mha":
            return self.raw
        image = self.image if self.image is not None else read_image(self.raw, self.where)
        return write_image(image, "mha")


# ---- fiducials ---------------------------------------------------------------------------------


def _read_fcsv(path: str) -> np.ndarray:
    """Slicer's markups CSV: '#' header lines (one may name the coordinate system), then id,x,y,z,..."""
    system = "RAS"  # Slicer's default before it wrote the header line
    points = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("#"):
                if "CoordinateSystem" in line:
                    value = line.split("=", 1)[-1].strip().upper()
                    system = {"0": "RAS", "1": "LPS"}.get(value, value)
                continue
            if line.strip():
                cells = next(csv.reader([line]))
                points.append([float(c) for c in cells[1:4]])
    array = np.asarray(points, dtype=float).reshape(-1, 3)
    return wire_fiducials.ras_lps(array) if system == "RAS" else array


def _read_json(path: str) -> np.ndarray:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if isinstance(data, dict) and "markups" in data:  # Slicer .mrk.json
        points = []
        for markup in data["markups"]:
            system = str(markup.get("coordinateSystem", "LPS")).upper()
            chunk = np.asarray([p["position"] for p in markup.get("controlPoints", [])], dtype=float).reshape(-1, 3)
            points.append(wire_fiducials.ras_lps(chunk) if system == "RAS" else chunk)
        return np.concatenate(points) if points else np.zeros((0, 3))
    if isinstance(data, dict) and "points" in data:  # what `tomaat predict` writes
        data = data["points"]
    return np.asarray(data, dtype=float).reshape(-1, 3)


def _read_csv(path: str) -> np.ndarray:
    points = []
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle):
            cells = [c.strip() for c in row if c.strip()]
            if not cells:
                continue
            try:
                points.append([float(c) for c in cells[-3:]] if len(cells) > 3 else [float(c) for c in cells])
            except ValueError:
                if points:
                    raise
                continue  # a header row
    return np.asarray(points, dtype=float).reshape(-1, 3)


def load_fiducials(value, where: str) -> np.ndarray:
    """(N, 3) points in physical (LPS) coordinates, as the wire format carries them."""
    if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        path = os.fspath(value)
        lower = path.lower()
        reader = _read_fcsv if lower.endswith(".fcsv") else _read_json if lower.endswith(".json") else _read_csv
        try:
            return reader(path)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            raise InputFileError(
                f"{where}: {path} could not be read as points ({error}); expected {FIDUCIALS_HELP}"
            ) from None
    if isinstance(value, str):
        try:
            return wire_fiducials.parse(value, where)
        except RequestError as error:
            raise InputFileError(f"{error.message} (or a path to {FIDUCIALS_HELP})") from None
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputFileError(f"{where}: {type(value).__name__} is not points; expected {FIDUCIALS_HELP}") from None
    if array.size == 0:
        return np.zeros((0, 3))
    if array.ndim != 2 or array.shape[1] != 3 or not np.isfinite(array).all():
        raise InputFileError(f"{where}: points of shape {array.shape}; expected {FIDUCIALS_HELP}")
    return array


# ---- transforms --------------------------------------------------------------------------------

LINEAR = ("AffineTransform", "Euler3DTransform", "VersorRigid3DTransform", "Similarity3DTransform", "ScaleTransform")
LINEAR += ("TranslationTransform", "Euler2DTransform", "Similarity2DTransform", "ScaleSkewVersor3DTransform")


def _transform_field(transform: sitk.Transform) -> str:
    """The v1 text of a transform object: the file kind that keeps it, a newline, the base64 file."""
    name = transform.GetName()
    if name == "DisplacementFieldTransform":
        field = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
        return "nii.gz\n" + b64.encode_lines(write_image(field, "nii.gz")).decode("ascii")
    kind = "mat" if name in LINEAR else "h5"
    data = write_then_bytes("." + kind, lambda path: sitk.WriteTransform(transform, path))
    return kind + "\n" + b64.encode_lines(data).decode("ascii")


def load_transform(value, where: str) -> str:
    """The transform field's text (`KIND\\n<base64>`), keeping a .mat or .h5 file's own bytes."""
    if isinstance(value, sitk.Transform):
        return _transform_field(value)
    if isinstance(value, sitk.Image):
        return _transform_field(sitk.DisplacementFieldTransform(sitk.Cast(value, sitk.sitkVectorFloat64)))
    path = os.fspath(value)
    if not os.path.isfile(path):
        raise InputFileError(f"{where}: no such file: {path}; expected {TRANSFORM_HELP}")
    lower = path.lower()
    for kind in ("mat", "h5"):
        if lower.endswith("." + kind):
            with open(path, "rb") as handle:
                return kind + "\n" + b64.encode_lines(handle.read()).decode("ascii")
    if lower.endswith((".txt", ".tfm")):
        try:
            return _transform_field(sitk.ReadTransform(path))
        except RuntimeError:
            raise InputFileError(f"{where}: {path} is not an ITK transform file; expected {TRANSFORM_HELP}") from None
    field = read_volume(path, where)
    if field.GetNumberOfComponentsPerPixel() != field.GetDimension():
        raise InputFileError(
            f"{where}: {path} has {field.GetNumberOfComponentsPerPixel()} component(s) per voxel; a displacement "
            f"field needs {field.GetDimension()}; expected {TRANSFORM_HELP}"
        )
    return "nii.gz\n" + b64.encode_lines(write_image(field, "nii.gz")).decode("ascii")


@dataclass(frozen=True)
class Loader:
    """How the client turns what a user points at into the value an element sends, and says what it takes."""

    help: str
    load: Callable


# The element types whose values are files or points; the others are checked by the element's own rule.
LOADERS = {
    "volume": Loader(IMAGE_HELP, VolumeFile),
    "fiducials": Loader(FIDUCIALS_HELP, load_fiducials),
    "transform": Loader(TRANSFORM_HELP, load_transform),
}
