"""A real Orthanc PACS with DICOMweb for the PACS loop's tests, and synthetic CT series to put in it.

Holds no tests. The PACS cases need TOMAAT_TEST_DICOMWEB_URL, and the basic-authentication ones
TOMAAT_TEST_DICOMWEB_AUTH_URL (both exported by scripts/test.sh from scripts/orthanc.sh; user and password
from TOMAAT_TEST_DICOMWEB_USER and TOMAAT_TEST_DICOMWEB_PASSWORD, by default the ones test.sh starts it with).
Without them those tests are skipped, as the PostgreSQL ones are without TOMAAT_TEST_POSTGRES_URL. The PACS is
shared and never emptied: every series made here has fresh UIDs, so tests look only at their own studies.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat, format_number_as_ds

DICOMWEB_URL = os.environ.get("TOMAAT_TEST_DICOMWEB_URL", "")
DICOMWEB_AUTH_URL = os.environ.get("TOMAAT_TEST_DICOMWEB_AUTH_URL", "")
AUTH = (
    os.environ.get("TOMAAT_TEST_DICOMWEB_USER", "tomaat"),
    os.environ.get("TOMAAT_TEST_DICOMWEB_PASSWORD", "tomaat-test"),
)
needs_orthanc = pytest.mark.skipif(
    not DICOMWEB_URL, reason="TOMAAT_TEST_DICOMWEB_URL is unset (export it from scripts/orthanc.sh)"
)
needs_orthanc_auth = pytest.mark.skipif(
    not DICOMWEB_AUTH_URL,
    reason="TOMAAT_TEST_DICOMWEB_AUTH_URL is unset (export it from scripts/orthanc.sh with TOMAAT_ORTHANC_USER "
    "and TOMAAT_ORTHANC_PASSWORD set, as scripts/test.sh does)",
)

TIMEOUT = 30


def orthanc_root(dicomweb_url: str) -> str:
    """Orthanc's REST root for its DICOMweb root: http://127.0.0.1:18042/dicom-web -> http://127.0.0.1:18042."""
    url = dicomweb_url.rstrip("/")
    if not url.endswith("/dicom-web"):
        raise ValueError(f"not an Orthanc DICOMweb root (…/dicom-web): {dicomweb_url}")
    return url.removesuffix("/dicom-web")


def web_client(dicomweb_url: str, auth: tuple[str, str] | None = None):
    """A dicomweb_client.DICOMwebClient for the PACS, logged in with basic authentication when auth is given."""
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    session.auth = auth
    return DICOMwebClient(dicomweb_url, session=session)


def to_bytes(dataset: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def store(dicomweb_url: str, items: Iterable[Dataset | bytes], auth: tuple[str, str] | None = None) -> list[str]:
    """Put instances (datasets or Part 10 bytes) into the PACS, one POST /instances each; their Orthanc ids."""
    root = orthanc_root(dicomweb_url)
    ids = []
    for item in items:
        body = item if isinstance(item, bytes) else to_bytes(item)
        answer = requests.post(
            f"{root}/instances", data=body, headers={"Content-Type": "application/dicom"}, auth=auth, timeout=TIMEOUT
        )
        assert answer.status_code == 200, f"POST {root}/instances: {answer.status_code} {answer.text[:500]}"
        status = answer.json()
        assert status.get("Status") in ("Success", "AlreadyStored"), status
        ids.append(status["ID"])
    return ids


def series_uids(dicomweb_url: str, study_uid: str | None = None, auth: tuple[str, str] | None = None) -> set[str]:
    """The SeriesInstanceUIDs the PACS holds, of one study when study_uid is given (Orthanc's /tools/find)."""
    query = {"StudyInstanceUID": study_uid} if study_uid else {}
    answer = requests.post(
        f"{orthanc_root(dicomweb_url)}/tools/find",
        json={"Level": "Series", "Query": query, "Expand": True},
        auth=auth,
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, f"/tools/find: {answer.status_code} {answer.text[:500]}"
    return {series["MainDicomTags"]["SeriesInstanceUID"] for series in answer.json()}


# Lossless compressions that other tools write: (the tool, its arguments before the input and output files).
COMPRESSORS = {
    "JPEG 2000 (gdcmconv)": ("gdcmconv", ["--j2k"]),
    "RLE (dcmcrle)": ("dcmcrle", []),
    "JPEG-LS (dcmcjpls)": ("dcmcjpls", []),
}


def compressed(datasets: Iterable[Dataset], how: str) -> list[bytes]:
    """The instances as Part 10 files compressed losslessly by another tool (COMPRESSORS[how]), as a modality
    or a PACS would store them; skips the test, saying how to install the tool, when it is missing."""
    tool, arguments = COMPRESSORS[how]
    if shutil.which(tool) is None:
        message = f"{tool} is not installed (bash scripts/test-tools.sh installs dcmtk and libgdcm-tools)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI runs scripts/test.sh, which installs it: missing there is a broken set-up
        pytest.skip(message)
    files = []
    with tempfile.TemporaryDirectory() as folder:
        for k, dataset in enumerate(datasets):
            source, target = os.path.join(folder, f"{k}.dcm"), os.path.join(folder, f"{k}.out.dcm")
            with open(source, "wb") as handle:
                handle.write(to_bytes(dataset))
            subprocess.run([tool, *arguments, source, target], check=True, capture_output=True, timeout=TIMEOUT)
            with open(target, "rb") as handle:
                files.append(handle.read())
    return files


@dataclass(frozen=True)
class SyntheticSeries:
    """A CT series made by make_ct_series and what a correct reader must make of it.

    volume is (z, y, x) in HU, z in the order of slice positions along the normal; spacing is (x, y, z) =
    (column spacing, row spacing, slice spacing) in mm; origin is the first slice's ImagePositionPatient;
    direction is SimpleITK's: the 3x3 matrix whose columns are the row direction (x), the column direction (y)
    and the slice normal (z), flattened row by row. slice_uids are the SOPInstanceUIDs in that same z order.
    """

    datasets: list[Dataset]
    volume: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    study_uid: str
    series_uid: str
    slice_uids: tuple[str, ...]

    @property
    def normal(self) -> np.ndarray:
        return np.array(self.direction).reshape(3, 3)[:, 2]


def _ds(value: float) -> DSfloat:
    """A DS of at most 16 characters, as DICOM allows, whose float is the number its text says (not the
    unrounded one a DSfloat(value, auto_format=True) keeps), so the expected geometry is what is written."""
    return DSfloat(format_number_as_ds(float(value)))


def _rotation(about_z_deg: float, about_x_deg: float) -> np.ndarray:
    a, b = np.radians(about_z_deg), np.radians(about_x_deg)
    about_z = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    return about_z @ about_x


def ct_pattern(slices: int, rows: int, cols: int) -> np.ndarray:
    """HU (z, y, x): an off-centre 300 HU box in -1000 HU air, plus a gradient rising along x, y and z at
    different rates (1, 2 and 5 HU a voxel), so a flip, a transposition or slices out of order all show."""
    z, y, x = np.meshgrid(np.arange(slices), np.arange(rows), np.arange(cols), indexing="ij")
    volume = np.full((slices, rows, cols), -1000, dtype=np.int16)
    box = (z >= slices // 4) & (z < slices * 3 // 4) & (y >= rows // 5) & (y < rows // 2 + 1)
    box &= (x >= cols // 3) & (x < cols - 2)
    volume[box] = 300
    return (volume + x + 2 * y + 5 * z).astype(np.int16)


def make_ct_series(
    *,
    cols: int = 24,
    rows: int = 20,
    slices: int = 12,
    pixel_spacing: tuple[float, float] = (0.8, 1.0),
    slice_spacing: float = 2.5,
    origin: Sequence[float] = (-120.5, 33.25, 410.0),
    rotation_deg: tuple[float, float] = (20.0, 10.0),
    shuffle: bool = False,
    seed: int = 0,
    study_uid: str | None = None,
    patient_id: str = "TOMAAT-TEST",
    patient_name: str = "Test^Phantom",
    series_description: str = "tomaat synthetic CT",
) -> SyntheticSeries:
    """A synthetic CT series of single-frame instances, in memory, with the volume and geometry it encodes.

    pixel_spacing is DICOM's PixelSpacing order: (row spacing, i.e. between rows, along y; column spacing,
    along x), so the default has x spacing 1.0 mm and y spacing 0.8 mm. The orientation is the identity rotated
    rotation_deg[0] degrees about z, then rotation_deg[1] about x (oblique by default); slice k lies at
    origin + k * slice_spacing * normal. Pixels are int16 with RescaleIntercept -1024 (stored = HU + 1024).
    shuffle=True returns the instances in a seeded random order, so readers must sort by position.
    study_uid puts the series into an existing study (same patient needed); otherwise a new study is made.
    """
    rotation = _rotation(*rotation_deg)
    orientation = [_ds(v) for v in (*rotation[:, 0], *rotation[:, 1])]
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    positions = [[_ds(v) for v in np.asarray(origin, float) + k * slice_spacing * normal] for k in range(slices)]
    volume = ct_pattern(slices, rows, cols)
    stored = (volume.astype(np.int32) + 1024).astype("<i2")

    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    slice_uids = tuple(generate_uid() for _ in range(slices))
    datasets = []
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = slice_uids[k]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = slice_uids[k]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "tomaat tests"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "tomaat synthetic study"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.KVP = "120"
        ds.SliceThickness = _ds(slice_spacing)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = positions[k]
        ds.ImageOrientationPatient = orientation
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [_ds(pixel_spacing[0]), _ds(pixel_spacing[1])]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = stored[k].tobytes()
        datasets.append(ds)
    if shuffle:
        random.Random(seed).shuffle(datasets)

    direction = np.column_stack([row_dir, col_dir, normal])
    return SyntheticSeries(
        datasets=datasets,
        volume=volume,
        spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), float(slice_spacing)),
        origin=tuple(float(v) for v in positions[0]),
        direction=tuple(float(v) for v in direction.ravel()),
        study_uid=study_uid,
        series_uid=series_uid,
        slice_uids=slice_uids,
    )


def hu_volume(datasets: Iterable[Dataset]) -> np.ndarray:
    """The (z, y, x) HU volume of single-frame instances, sorted by position along their slice normal."""
    datasets = list(datasets)
    orientation = np.array(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(datasets, key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), normal)))
    return np.stack(
        [ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in ordered]
    )
