"""The DICOM decoder process: pydicom parses a PACS's files here, highdicom builds SEGs, nothing else opens.

Started by tomaat/dicom/series.py's pool as `python -m tomaat.dicom.decoder_process FOLDER MEMORY`,
with the protocol, memory cap and Landlock confinement of tomaat/files/decoder_process.py (whose
docstring says why). Once confined it can open no library file, so the warm-up first runs every
operation on a tiny series of each accepted transfer syntax, the refusals included: whatever
pydicom, highdicom, numpy or the codecs import on first use is loaded before the door closes.

Operations: `series` (the voxels of N instances as one volume, as a raw file, and its geometry and
UIDs as JSON), `seg` (a DICOM SEG of a label volume on those instances, as a file), and `probe`.
A file that is not one volume gets `{"ok": false, "refused": message}`, the message for the user.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import sys
import warnings

import numpy as np
import pydicom
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, JPEGBaseline8Bit, JPEGExtended12Bit, generate_uid

from ..files.decoder_process import probe, serve
from .pixels import NATIVE, PLUGINS
from .segmentation import build
from .slices import DECODABLE, Refused, read, stack, voxels

_LABEL_TYPES: dict[str, np.dtype] = {"|u1": np.dtype("|u1"), "<u2": np.dtype("<u2")}
_WARM_UP_DEPTHS: dict[str, tuple[int, int]] = {JPEGBaseline8Bit: (8, 0), JPEGExtended12Bit: (12, 0)}  # bits, signed


def _sources(folder: str, message: dict) -> tuple[list[str], list[str]]:
    """(paths, names for messages) of the instances, in the order the server gave them."""
    paths = [os.path.join(folder, name) for key, name in message["files"].items() if key != "label"]
    names = list(message.get("names") or [])
    if len(names) != len(paths):
        names = [f"file {i + 1} of {len(paths)}" for i in range(len(paths))]
    return paths, names


def _series(folder: str, message: dict, out: str) -> dict:
    paths, names = _sources(folder, message)
    volume = stack([read(path, name) for path, name in zip(paths, names, strict=True)], names)
    array = voxels(volume, names)
    array.tofile(out)
    first = volume.datasets[0]
    return {
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "spacing": list(volume.spacing),
        "origin": list(volume.origin),
        "direction": list(volume.direction),
        "order": volume.order,
        "instances": [
            {"uid": str(d.get("SOPInstanceUID", "")), "class": str(d.get("SOPClassUID", ""))} for d in volume.datasets
        ],
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "series_uid": str(first.get("SeriesInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "modality": str(first.get("Modality", "")),
        "description": str(first.get("SeriesDescription", "")),
    }


def _seg(folder: str, message: dict, out: str) -> dict:
    paths, names = _sources(folder, message)
    volume = stack([read(path, name) for path, name in zip(paths, names, strict=True)], names)
    if volume.order != list(message["order"]):
        raise Refused("these files sort into another slice order than the series the label was made for")
    shape = (len(paths), volume.rows, volume.columns)
    label = np.fromfile(os.path.join(folder, message["files"]["label"]), dtype=_LABEL_TYPES[message["label_dtype"]])
    if label.size != np.prod(shape):
        raise Refused(f"the label holds {label.size} voxels; expected {' x '.join(map(str, shape))}")
    build(volume, label.reshape(shape), message["segments"], message["params"]).save_as(out)
    return {"size": os.path.getsize(out)}


def _handle(folder: str, message: dict) -> dict:
    op = message.get("op")
    if op == "probe":
        return probe(message)
    out = os.path.join(folder, message["out"])
    if op == "series":
        return _series(folder, message, out)
    if op == "seg":
        return _seg(folder, message, out)
    raise ValueError(op)


def _tiny_series(folder: str, syntax: str, slope: float = 1.0, uids: bool = True) -> list[bytes]:
    """Three 4 x 3 CT slices in `syntax`, written by pydicom, or 32 x 32 compressed by GDCM (OpenJPEG's
    smallest at its default resolution levels): what the warm-up reads."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    bits, signed = _WARM_UP_DEPTHS.get(syntax, (16, 1))
    files = []
    for k in range(3):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(syntax) if syntax in NATIVE else pydicom.uid.ExplicitVRLittleEndian
        ds.SOPClassUID = pydicom.uid.CTImageStorage
        if uids:
            ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), study, series
        ds.FrameOfReferenceUID = frame
        ds.SpecificCharacterSet, ds.Modality, ds.SeriesDescription = "ISO_IR 100", "CT", "warm-up"
        ds.Rows, ds.Columns = (3, 4) if syntax in NATIVE or syntax == pydicom.uid.RLELossless else (32, 32)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
            (bits + 7) // 8 * 8,
            bits,
            bits - 1,
            signed,
        )
        ds.PixelSpacing, ds.ImageOrientationPatient = [0.5, 0.5], [1, 0, 0, 0, 0.8, 0.6]
        ds.ImagePositionPatient = [1.5, 2.0 - 1.5 * k, 2.5 + 2.0 * k]  # 2.5 mm steps along the normal
        ds.RescaleSlope, ds.RescaleIntercept = slope, -1024
        pixels = np.arange(ds.Rows * ds.Columns).reshape(ds.Rows, ds.Columns) % 200 + k
        dtype = {8: "u1", 12: "<u2", 16: "<i2"}[bits]
        if syntax == pydicom.uid.ExplicitVRBigEndian:
            dtype = ">i2"
        ds.PixelData = pixels.astype(dtype).tobytes()
        data = _part10(ds)
        if syntax == pydicom.uid.RLELossless:
            ds.compress(syntax, pixels.astype(dtype), encoding_plugin="pydicom")
            data = _part10(ds)
        elif syntax in PLUGINS:
            data = _gdcm_compress(folder, data, syntax)
            if not uids:  # GDCM's writer makes up the UIDs that are missing
                ds = pydicom.dcmread(io.BytesIO(data))
                for key in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
                    delattr(ds, key)
                del ds.file_meta.MediaStorageSOPInstanceUID
                data = _part10(ds)
        files.append(data)
    return files


def _part10(ds: Dataset) -> bytes:
    """A Part 10 file, also of a dataset whose instance UIDs an anonymiser removed (so has its file meta)."""
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds.preamble = b"\0" * 128
    buffer = io.BytesIO()
    ds.save_as(
        buffer,
        implicit_vr=ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian,
        little_endian=ds.file_meta.TransferSyntaxUID != pydicom.uid.ExplicitVRBigEndian,
    )
    return buffer.getvalue()


def _gdcm_compress(folder: str, data: bytes, syntax: str) -> bytes:
    """`data` (an uncompressed instance) compressed by GDCM's encoders, the warm-up's only encoder for JPEG."""
    import gdcm

    source, target = os.path.join(folder, "warm-source"), os.path.join(folder, "warm-target")
    with open(source, "wb") as handle:
        handle.write(data)
    reader = gdcm.ImageReader()
    reader.SetFileName(source)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(syntax))))
    writer = gdcm.ImageWriter()
    writer.SetFileName(target)
    if not reader.Read():
        raise RuntimeError("GDCM could not read the warm-up slice")
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM could not compress the warm-up slice to {syntax}")
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM could not write the warm-up slice in {syntax}")
    with open(target, "rb") as handle:
        compressed = handle.read()
    os.unlink(source)
    os.unlink(target)
    return compressed


def _warm(folder: str) -> None:
    """Every operation on tiny series, refusals too, so nothing is first imported once confined."""
    for encoding in set(python_encoding.values()):
        codecs.lookup(encoding)

    def run(op: str, files: list[bytes], refused: bool = False, **extra) -> dict:
        named = {}
        for index, data in enumerate(files):
            named[str(index)] = name = f"warm-{index}"
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(data)
        if "label" in extra:
            named["label"] = "warm-label"
            extra.pop("label").tofile(os.path.join(folder, "warm-label"))
        try:
            return _handle(folder, {"op": op, "files": named, "out": "warm.raw", **extra})
        except Refused:
            if not refused:
                raise
            return {}
        finally:
            for name in os.listdir(folder):
                os.unlink(os.path.join(folder, name))

    for syntax in DECODABLE:
        run("series", _tiny_series(folder, syntax))
    run("series", _tiny_series(folder, pydicom.uid.JPEG2000Lossless, uids=False))
    lying = pydicom.dcmread(io.BytesIO(_tiny_series(folder, pydicom.uid.JPEGLSLossless)[0]))
    lying.Rows = 64  # the stream says 32: refused before GDCM sees it
    buffer = io.BytesIO()
    lying.save_as(buffer)
    run("series", [buffer.getvalue(), *_tiny_series(folder, pydicom.uid.JPEGLSLossless)[1:]], True)
    files = _tiny_series(folder, pydicom.uid.ExplicitVRLittleEndian, slope=0.5)
    answer = run("series", files)
    label = np.zeros((3, 3, 4), np.uint8)
    label[1, 1:, 1:3], label[2, 0, 0] = 1, 3
    segment = {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["85756007", "SCT", "Tissue"]}
    segments = [{**segment, "number": n, "value": v, "name": f"label {v}"} for n, v in ((1, 1), (2, 3), (3, 7))]
    utf8 = [{**segments[0], "name": "Leber ü 肝臓"}]
    params = {
        "series_number": 1,
        "series_description": "warm-up",
        "manufacturer": "TOMAAT",
        "manufacturer_model_name": "warm-up",
        "software_versions": ["0", "0"],
        "device_serial_number": "0",
        "algorithm_name": "warm-up",
        "algorithm_version": "0",
    }
    order, dtype = answer["order"], "|u1"
    run("seg", files, order=order, label_dtype=dtype, label=label, segments=segments, params=params)
    run("seg", files, order=order, label_dtype=dtype, label=label * 0, segments=segments, params=params)
    run(
        "seg",
        files,
        order=order,
        label_dtype=dtype,
        label=label,
        segments=utf8,
        params={**params, "series_uid": "2.25.1"},
    )
    run("seg", files, True, order=order, label_dtype=dtype, label=label[:1], segments=segments, params=params)
    bad = _tiny_series(folder, JPEGBaseline8Bit)[:1] + [b"not DICOM" * 20]
    for refused in ([b"not DICOM" * 20], bad[:1], files[:1], files + files[:1], [files[0], files[2]]):
        run("series", refused, True)
    not_image = pydicom.dcmread(io.BytesIO(files[0]))
    not_image.SOPClassUID = pydicom.uid.SegmentationStorage
    buffer = io.BytesIO()
    not_image.save_as(buffer)
    run("series", [buffer.getvalue(), files[1]], True)


def main() -> None:
    warnings.simplefilter("ignore")  # pydicom warns about every odd value; the answers say what matters
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("highdicom").setLevel(logging.ERROR)
    serve(sys.argv[1], int(sys.argv[2]), _warm, _handle, Refused)


if __name__ == "__main__":
    main()
