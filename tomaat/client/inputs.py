"""Loading what a user points at (files, folders, arrays, objects) into the values the wire format carries.

Each loader ends in bytes or text ready for a form field, so the request can be
checked and encoded completely before the first byte is uploaded.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import RequestError
from ..files import image_headers, mha
from ..files.scratch import write_then_bytes
from ..protocol import b64
from ..protocol import fiducials as wire_fiducials
from ..protocol.volumes import read_image, sniff_format, unwrap, write_image
from . import compression
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


HEAD = 65536 + 4096  # an MHA or NRRD header is at most 64 KiB (their readers' limit), then a little data
READ_BATCH = 4  # chunks of upload.CHUNK read from disk per trip to the thread pool while a file uploads


class FileData:
    """A file's bytes, read from disk while they are sent rather than held in memory.

    The file was checked when the request was prepared (its head sniffed, its header parsed); it
    must not change until it is sent: a different size, inode or modification time, or a short
    read, ends the upload with an InputFileError instead of sending a mix of two files.
    """

    def __init__(self, path: str, stat: os.stat_result, where: str):
        self.path, self.stat, self.where = path, stat, where
        self._handle = None
        self._lock = threading.Lock()  # reads run in the thread pool; an abandoned upload closes from the reactor

    def __len__(self) -> int:
        return self.stat.st_size

    def _changed(self) -> InputFileError:
        return InputFileError(f"{self.where}: {self.path} changed while it was being sent; send it again")

    def _same(self, stat: os.stat_result) -> bool:
        old = self.stat
        now = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return now == (old.st_dev, old.st_ino, old.st_size, old.st_mtime_ns)

    def _opened(self):
        """The file, checked to be the one that was prepared."""
        try:
            handle = open(self.path, "rb")
        except OSError as error:
            raise InputFileError(f"{self.where}: {self.path} could not be read ({error.strerror})") from None
        if not self._same(os.fstat(handle.fileno())):
            handle.close()
            raise self._changed()
        return handle

    def _open(self):
        if self._handle is None:
            self._handle = self._opened()
        return self._handle

    def _read(self, offset: int, size: int) -> bytes:
        with self._lock:
            handle = self._open()
            handle.seek(offset)
            return handle.read(size) or b""

    def read(self, offset: int, sizes: list[int]) -> list[bytes]:
        """The pieces of the given sizes from offset on (in the thread pool, one batch at a time)."""
        pieces = []
        for size in sizes:
            piece = self._read(offset, size)
            if len(piece) != size:
                raise self._changed()
            pieces.append(piece)
            offset += size
        return pieces

    def sample(self, offset: int, size: int) -> bytes:
        with self._opened() as handle:
            handle.seek(offset)
            return handle.read(size) or b""

    def whole(self) -> bytes:
        with self._opened() as handle:
            data = handle.read(len(self) + 1) or b""
        if len(data) != len(self):
            raise self._changed()
        return data

    def close(self, check: bool = True) -> None:
        """After the last piece (check: the file must still be the one that was checked), or when abandoned."""
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            try:
                if check and not self._same(os.fstat(handle.fileno())):
                    raise self._changed()
            finally:
                handle.close()


def image_digest(image: sitk.Image) -> str:
    """A SHA-256 of an image's voxels and geometry: the same volume however it was made."""
    digest = hashlib.sha256()
    described = (
        image.GetPixelIDValue(),
        image.GetNumberOfComponentsPerPixel(),
        image.GetSize(),
        image.GetSpacing(),
        image.GetOrigin(),
        image.GetDirection(),
    )
    digest.update(repr(described).encode("ascii"))
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).data.cast("B"))
    return digest.hexdigest()


class VolumeFile:
    """A volume ready to send: the file's own bytes where a server reads its format, else MHA.

    A file is kept as its own bytes only when it is one self-contained file the server
    recognises by content and whose header parses here (a detached .mhd header, a NRRD
    naming a data file, are read with SimpleITK and sent as MHA); it is then sent from disk
    as it uploads, never read whole unless it is compressed. `upload()` says what a v2
    server gets, compressed or not (compression.py); `key()` names the volume for reuse.
    """

    def __init__(self, value, where: str):
        self.where = where
        self.raw: bytes | None = None  # the file's bytes, in memory
        self.file: FileData | None = None  # or on disk, sent from there
        self.format: str | None = None
        self.image: sitk.Image | None = None
        self.data_start = 0  # where an MHA or NRRD file's data starts after its header
        self.compressed = True  # as given: compressed already, or not ours to compress (sent as it is)
        self._key: tuple | None = None
        if isinstance(value, sitk.Image):
            self.image = value
            return
        if isinstance(value, (bytes, bytearray, memoryview)):
            self._adopt(bytes(value))
            if self.raw is None:
                raise InputFileError(f"{where}: the bytes are not {IMAGE_HELP}")
            return
        path = os.fspath(value)
        if not os.path.exists(path):
            raise InputFileError(f"{where}: no such file or folder: {path}")
        if os.path.isfile(path):
            stat = os.stat(path)
            with open(path, "rb") as handle:
                head = handle.read(HEAD)
            fmt = sniff_format(head)
            if fmt is not None and self._layout(head, fmt, stat.st_size):
                self.file, self.format = FileData(path, stat, where), fmt
                self._key = ("file", os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
                return
        self.image = read_volume(path, where)

    def _adopt(self, raw: bytes) -> None:
        if sniff_format(raw) is None:
            return
        try:
            self.raw, self.format = unwrap(raw, self.where)
        except RequestError:
            self.raw = None
            return
        if not self._layout(self.raw, self.format, len(self.raw)):
            self.compressed = True  # sent as it is: the server's reader says what is wrong with it

    def _layout(self, head: bytes, fmt: str, size: int) -> bool:
        """Whether the file is one the server reads as it is, noting whether it is compressed already."""
        try:
            if fmt == "mha":
                header = mha.parse_header(head, self.where)
                self.compressed, self.data_start = header.compressed, header.start
            elif fmt == "nrrd":
                fields, self.data_start = image_headers.nrrd_header(head, self.where)
                encoding = fields.get("encoding", "").lower()
                if encoding not in ("raw", "gzip", "gz"):
                    return False
                self.compressed = encoding != "raw"
            else:
                self.compressed = fmt == "nii.gz"
        except RequestError:
            return False
        return self.data_start <= size

    @property
    def size(self) -> int:
        """The bytes of the file as given (0 for an image the client encodes)."""
        return len(self.raw) if self.raw is not None else len(self.file) if self.file is not None else 0

    def key(self) -> tuple:
        """What names this volume for reuse: a file by its path, inode, size and modification time,
        bytes and images by a SHA-256 of their content (computed here, in the thread pool)."""
        if self._key is None:
            if self.raw is not None:
                self._key = ("bytes", hashlib.sha256(self.raw).hexdigest())
            else:
                assert self.image is not None  # a file's key was set when it was opened
                self._key = ("image", image_digest(self.image))
        return self._key

    def _bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        assert self.file is not None  # only for a volume kept as given: in memory or on disk
        return self.file.whole()

    def upload(self, far: bool, compress: bool | None = None):
        """(bytes or FileData, format) of the binary part a v2 server gets, compressed when
        compression.pays() says so (far: the server is not near, see compression.py); a file
        compressed already is sent as it is."""
        if self.image is not None:
            array = np.ascontiguousarray(sitk.GetArrayViewFromImage(self.image))
            smaller = compression.pays(array.data.cast("B"), far, compress)
            written = mha.write(self.image, smaller, compression.LEVEL)
            return (written if written is not None else write_image(self.image, "mha", smaller)), "mha"
        whole = self.raw if self.raw is not None else self.file
        if self.compressed or not compression.pays(whole, far, compress):
            return whole, self.format
        data = self._bytes()
        view = memoryview(data)[self.data_start :]
        if self.format == "mha":
            packed = compression.deflate(view)
            return compression.mha_header(data[: self.data_start], len(packed)) + packed, "mha"
        if self.format == "nrrd":
            return compression.nrrd_header(data[: self.data_start]) + compression.gzip(view), "nrrd"
        return compression.gzip(data), "nii.gz"

    def native(self) -> tuple[bytes, str]:
        """(bytes, format) for a binary v2 part, as given (uncompressed when given so)."""
        if self.image is None:
            assert self.format is not None  # a volume kept as given has its format
            return self._bytes(), self.format
        return write_image(self.image, "mha"), "mha"

    def mha(self) -> bytes:
        """MHA bytes, what v1 servers read (after base64)."""
        if self.image is None and self.format == "mha":
            return self._bytes()
        image = self.image if self.image is not None else read_image(self._bytes(), self.where)
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

LINEAR: tuple[str, ...] = ("AffineTransform", "Euler3DTransform", "VersorRigid3DTransform", "Similarity3DTransform")
LINEAR += ("ScaleTransform", "TranslationTransform", "Euler2DTransform", "Similarity2DTransform")
LINEAR += ("ScaleSkewVersor3DTransform",)


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
