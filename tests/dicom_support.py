"""A synthetic CT series written by pydicom, with geometry that defaults cannot fake: the DICOM tests' input.

Oblique orientation (20 degrees about z, 10 about x), a non-zero origin, unequal row and column
spacing, a voxel pattern that differs in every slice, InstanceNumbers running against the slice
positions, and the files handed over shuffled: a reader that stacks by arrival, by
InstanceNumber or by a default geometry gets something visibly wrong.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DS

ORIGIN = (-120.5, 33.25, 410.0)
PIXEL_SPACING = (0.8, 1.0)  # DICOM order: between rows (y), between columns (x)
SLICE_SPACING = 2.5
INTERCEPT = -1024


def _rotation(z_degrees: float = 20.0, x_degrees: float = 10.0) -> np.ndarray:
    a, b = math.radians(z_degrees), math.radians(x_degrees)
    about_z = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return about_z @ about_x


ROW_COSINE, COLUMN_COSINE = (tuple(round(float(v), 8) for v in _rotation()[:, i]) for i in (0, 1))
NORMAL = tuple(float(v) for v in np.cross(ROW_COSINE, COLUMN_COSINE))
DIRECTION = tuple(float(v) for v in np.column_stack([ROW_COSINE, COLUMN_COSINE, NORMAL]).ravel())


def stored_values(columns: int, rows: int, slices: int) -> np.ndarray:
    """(z, y, x) stored values: every voxel known, every slice different."""
    z, y, x = np.meshgrid(np.arange(slices), np.arange(rows), np.arange(columns), indexing="ij")
    return ((x * 37 + y * 101 + z * 1009) % 3000 - 200).astype(np.int16)


def position(k: int, origin=ORIGIN, step: float = SLICE_SPACING) -> list:
    return [DS(o + k * step * n, auto_format=True) for o, n in zip(origin, NORMAL, strict=True)]


def ct_datasets(columns: int = 24, rows: int = 20, slices: int = 12) -> list[Dataset]:
    """The slices in position order, ready to be altered by a test and then encoded."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    values = stored_values(columns, rows, slices)
    datasets = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "TOMAAT-1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "CT", "synthetic oblique CT", 3
        ds.InstanceNumber = slices - k  # against the positions: sorting by it would reverse the volume
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.ImageOrientationPatient = list(ROW_COSINE + COLUMN_COSINE)
        ds.ImagePositionPatient = position(k)
        ds.SliceThickness = SLICE_SPACING
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = INTERCEPT, 1, "HU"
        ds.PixelData = values[k].astype("<i2").tobytes()
        datasets.append(ds)
    return datasets


def encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class CtSeries:
    files: list[bytes]  # in arrival order
    arrival: list[int]  # files[i] is slice arrival[i]
    datasets: list[Dataset]  # in slice order
    hu: np.ndarray  # (z, y, x), what the volume must hold

    @property
    def instances(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    @property
    def origin(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.datasets[0].ImagePositionPatient)

    @property
    def spacing(self) -> tuple[float, float, float]:
        first, last = (
            np.array([float(v) for v in ds.ImagePositionPatient]) for ds in (self.datasets[0], self.datasets[-1])
        )
        return (PIXEL_SPACING[1], PIXEL_SPACING[0], float((last - first) @ NORMAL) / (len(self.datasets) - 1))


def ct_series(columns: int = 24, rows: int = 20, slices: int = 12, seed: int = 7, datasets=None) -> CtSeries:
    """The series as files in a shuffled order (the same one for a seed)."""
    datasets = datasets if datasets is not None else ct_datasets(columns, rows, slices)
    arrival = list(range(len(datasets)))
    random.Random(seed).shuffle(arrival)
    hu = np.stack([ds.pixel_array.astype(np.int32) + INTERCEPT for ds in datasets]).astype(np.int16)
    return CtSeries([encode(datasets[i]) for i in arrival], arrival, datasets, hu)


def shuffled(datasets: list[Dataset], seed: int = 3) -> list[bytes]:
    order = list(range(len(datasets)))
    random.Random(seed).shuffle(order)
    return [encode(datasets[i]) for i in order]


def ct_datasets_of(kind: str, columns: int = 24, rows: int = 20, slices: int = 12) -> list[Dataset]:
    """ct_datasets stored another way, for the codecs that take only some: "s16" (as ct_datasets: signed
    16 bits), "u16" and "u12" (unsigned, 16 or 12 bits stored, the intercept moved so the HU stay the same)
    and "u8" (8 bits, what baseline JPEG holds)."""
    datasets = ct_datasets(columns, rows, slices)
    if kind == "s16":
        return datasets
    for ds in datasets:
        values = ds.pixel_array.astype(np.int32) + 200  # 0 ... 2999: fits 12 bits
        if kind == "u8":
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PixelData = (values % 256).astype(np.uint8).tobytes()
        else:
            bits = {"u16": 16, "u12": 12}[kind]
            ds.BitsStored, ds.HighBit = bits, bits - 1
            ds.PixelData = values.astype("<u2").tobytes()
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = INTERCEPT - 200
    return datasets


def hu(datasets: list[Dataset]) -> np.ndarray:
    """(z, y, x) rescaled values of datasets in slice order, by pydicom's reading of their native pixel data."""
    return np.stack(
        [ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets]
    )


def without_uids(data: bytes) -> bytes:
    """The instance as an anonymiser that removes Study, Series and SOP Instance UIDs leaves it, pixel data untouched."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if key in ds:
            delattr(ds, key)
    if "MediaStorageSOPInstanceUID" in ds.file_meta:
        del ds.file_meta.MediaStorageSOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)  # not enforce_file_format: that needs the UIDs removed here
    return buffer.getvalue()
