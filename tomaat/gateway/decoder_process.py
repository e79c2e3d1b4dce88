"""The gateway's decoder process: pydicom reads what a sender's instances say about themselves, confined.

Started by decoded.py's pool as `python -m tomaat.gateway.decoder_process FOLDER MEMORY`, with the
protocol, memory cap and Landlock confinement of tomaat/files/decoder_process.py. The listener needs
a few attributes of each instance (its UIDs, and what the routing rules look at) before it answers the
C-STORE; they are read here, never in the gateway, which holds the spool and the credentials.
The results (RTSTRUCT, SR) are built here too, from the source instances.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ..files.decoder_process import probe, serve

_TEXT = {
    "modality": ("Modality", 16),
    "series_description": ("SeriesDescription", 64),
    "body_part": ("BodyPartExamined", 16),
}
_UIDS = {
    "sop_uid": "SOPInstanceUID",
    "sop_class": "SOPClassUID",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
}


class Refused(Exception):
    """The file is not an instance the gateway can take; the text says why, for the sender's log."""


def _header(path: str) -> dict:
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - any reader failure: not a DICOM file
        raise Refused("not a DICOM Part 10 file") from None
    answer = {}
    for key, tag in _UIDS.items():
        value = str(dataset.get(tag, "") or "")
        if not value:
            raise Refused(f"no {tag}; expected an instance with its UIDs")
        answer[key] = value
    for key, (tag, limit) in _TEXT.items():
        value = dataset.get(tag, "")
        answer[key] = str(value if value is not None else "")[:limit]
    answer["transfer_syntax"] = str(dataset.file_meta.get("TransferSyntaxUID", ""))
    return answer


def _handle(folder: str, message: dict) -> dict:
    op = message.get("op")
    if op == "probe":
        return probe(message)
    if op == "header":
        return _header(os.path.join(folder, message["file"]))
    out = os.path.join(folder, message["out"])
    paths = [os.path.join(folder, name) for key, name in message["files"].items() if key != "label"]
    if op == "rtstruct":
        from .results import rtstruct

        return rtstruct(paths, os.path.join(folder, message["files"]["label"]), message, out)
    if op == "sr":
        from .results import sr

        return sr(paths, os.path.join(folder, message["files"]["label"]), message, out)
    raise ValueError(op)


def _warm(folder: str) -> None:
    """Read a tiny instance (and, when results can be built, build one of each) before confinement."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "CT"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path = os.path.join(folder, "warm.dcm")
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    _header(path)
    with open(path, "wb") as handle:
        handle.write(b"not DICOM" * 20)
    try:
        _header(path)
    except Refused:
        pass
    from .results import warm

    warm(folder)
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))


def main() -> None:
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("highdicom").setLevel(logging.ERROR)
    serve(sys.argv[1], int(sys.argv[2]), _warm, _handle, Refused)


if __name__ == "__main__":
    main()
