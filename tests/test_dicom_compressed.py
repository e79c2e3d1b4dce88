"""Compressed DICOM written by DCMTK, GDCM and pydicom's samples, decoded in the confined decoder and compared
with SimpleITK's (GDCM's) own reading; headers that lie about their pixel data; series without UIDs.

The series are compressed by other tools (scripts/test-tools.sh installs them): our decoder agreeing with our
own encoder would prove nothing. Lossless files must give the original values exactly; lossy ones the values
SimpleITK decodes from the same lossy file, exactly.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import pytest_twisted
import SimpleITK as sitk
from client_support import run_cli
from dicom_support import (
    DIRECTION,
    ORIGIN,
    ct_datasets_of,
    encode,
    hu,
    without_uids,
)
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pydicom.valuerep import DS
from scratch_checks import private_tempdir  # noqa: F401 (an autouse fixture)

from tomaat import LabelVolume, TomaatApp, Volume
from tomaat.dicom import DicomError, folder_paths, read_folder, read_series, write_seg
from tomaat.dicom import series as dicom_series

TOOLS = ("dcmcjpeg", "dcmcjpls", "dcmcrle", "gdcmconv")


@pytest.fixture(scope="module")
def tools():
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        message = f"{', '.join(missing)} missing: run scripts/test-tools.sh (Debian's dcmtk and libgdcm-tools)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _write(files: list[bytes], folder) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index, data in enumerate(files):
        path = os.path.join(folder, f"IM{index:04d}")
        with open(path, "wb") as handle:
            handle.write(data)
        paths.append(path)
    return paths


def _compress(command: list[str], kind: str, folder) -> tuple[str, list]:
    """The series of `kind` compressed file by file by `command` (a tool and its options) into folder/out."""
    datasets = ct_datasets_of(kind)
    sources = _write([encode(ds) for ds in datasets], folder / "in")
    os.makedirs(folder / "out")
    for source in sources:
        target = os.path.join(folder, "out", os.path.basename(source))
        subprocess.run([*command, source, target], check=True, capture_output=True, timeout=60)
    return str(folder / "out"), datasets


def _simpleitk(folder: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    return reader.Execute()


def _stored(image: sitk.Image, datasets: list) -> np.ndarray:
    """The stored values behind rescaled voxels (z, y, x): exact integers whatever the rescale's rounding."""
    array = sitk.GetArrayViewFromImage(image).astype(np.float64)
    slope = np.array([float(ds.get("RescaleSlope", 1)) for ds in datasets])[:, None, None]
    intercept = np.array([float(ds.get("RescaleIntercept", 0)) for ds in datasets])[:, None, None]
    return np.rint((array - intercept) / slope).astype(np.int64)


def _assert_same_grid(ours: sitk.Image, theirs: sitk.Image, tolerance: float = 1e-6) -> None:
    assert ours.GetSize() == theirs.GetSize()
    np.testing.assert_allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=tolerance)
    np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=tolerance)
    np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=tolerance)


# (tool and options, source series, transfer syntax it writes, lossless)
WRITERS = {
    "dcmtk jpeg baseline 8 bit": (["dcmcjpeg", "+eb"], "u8", "1.2.840.10008.1.2.4.50", False),
    "dcmtk jpeg baseline of int16": (["dcmcjpeg", "+eb"], "s16", "1.2.840.10008.1.2.4.50", False),
    "dcmtk jpeg extended 12 bit": (["dcmcjpeg", "+ee"], "u12", "1.2.840.10008.1.2.4.51", False),
    "dcmtk jpeg extended of int16": (["dcmcjpeg", "+ee"], "s16", "1.2.840.10008.1.2.4.51", False),
    "dcmtk jpeg lossless int16": (["dcmcjpeg", "+el"], "s16", "1.2.840.10008.1.2.4.57", True),
    "dcmtk jpeg lossless sv1 int16": (["dcmcjpeg", "+e1"], "s16", "1.2.840.10008.1.2.4.70", True),
    "dcmtk jpeg lossless sv1 uint16": (["dcmcjpeg", "+e1"], "u16", "1.2.840.10008.1.2.4.70", True),
    "dcmtk jpeg-ls lossless int16": (["dcmcjpls"], "s16", "1.2.840.10008.1.2.4.80", True),
    "dcmtk jpeg-ls lossless uint16": (["dcmcjpls"], "u16", "1.2.840.10008.1.2.4.80", True),
    "dcmtk jpeg-ls near-lossless uint16": (["dcmcjpls", "+en"], "u16", "1.2.840.10008.1.2.4.81", False),
    "dcmtk rle int16": (["dcmcrle"], "s16", "1.2.840.10008.1.2.5", True),
    "dcmtk rle 8 bit": (["dcmcrle"], "u8", "1.2.840.10008.1.2.5", True),
    "gdcm jpeg 2000 lossless int16": (["gdcmconv", "--j2k"], "s16", "1.2.840.10008.1.2.4.90", True),
    "gdcm jpeg 2000 lossless uint16": (["gdcmconv", "--j2k"], "u16", "1.2.840.10008.1.2.4.90", True),
    "gdcm jpeg 2000 lossy int16": (
        ["gdcmconv", "--j2k", "--lossy", "-q", "20"],
        "s16",
        "1.2.840.10008.1.2.4.91",
        False,
    ),
}


@pytest.mark.parametrize("case", list(WRITERS))
def test_a_series_compressed_by_another_tool_reads_as_simpleitk_reads_it(tools, tmp_path, case):
    command, kind, syntax, lossless = WRITERS[case]
    folder, datasets = _compress(command, kind, tmp_path)
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in _paths(folder)} == {
        syntax
    }
    ours = read_series(read_folder(folder), names=folder_paths(folder)).image
    theirs = _simpleitk(folder)
    _assert_same_grid(ours, theirs)
    np.testing.assert_allclose(ours.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(ours.GetDirection(), DIRECTION, atol=1e-6)
    written = [pydicom.dcmread(p, stop_before_pixels=True) for p in _paths(folder)]
    written.sort(key=lambda ds: -int(ds.InstanceNumber))  # InstanceNumber runs against the positions
    assert np.array_equal(_stored(ours, written), _stored(theirs, written))
    if lossless:
        assert np.array_equal(sitk.GetArrayViewFromImage(ours).astype(np.float64), hu(datasets))
    else:
        assert not np.array_equal(_stored(ours, written), _stored(theirs, written) * 0)  # something was decoded
    assert ours.GetPixelID() in (sitk.sitkInt16, sitk.sitkInt32, sitk.sitkFloat32)


def _paths(folder: str) -> list[str]:
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))]


# ---- pydicom's bundled samples (those in the wheel: the rest download on demand, which cannot work here) ----

# sample -> its uncompressed twin, where pydicom ships one
SAMPLES = {
    "MR_small_RLE.dcm": "MR_small.dcm",
    "MR_small_jp2klossless.dcm": "MR_small.dcm",
    "MR_small_jpeg_ls_lossless.dcm": "MR_small.dcm",
    "693_J2KI.dcm": None,
    "J2K_pixelrep_mismatch.dcm": None,
    "JPGExtended.dcm": None,
    "JPEG-lossy.dcm": None,
    "JPEG2000.dcm": None,
    "JPEGLSNearLossless_16.dcm": None,
    "JPEGLSNearLossless_08.dcm": None,
    "image_dfl.dcm": None,
}


def _as_series(path: str, slices: int = 3) -> list[bytes]:
    """The one slice of a sample as a series: copies at 3 mm steps along its normal, the pixel data untouched."""
    files = []
    for k in range(slices):
        ds = pydicom.dcmread(path)
        if "ImageOrientationPatient" not in ds:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = ds.get("PixelSpacing") or [0.5, 0.5]
        row, column = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
        start = np.array([float(v) for v in ds.get("ImagePositionPatient") or [10, -20, 30]])
        ds.ImagePositionPatient = [DS(v, auto_format=True) for v in start + 3 * k * np.cross(row, column)]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or pydicom.uid.CTImageStorage
        ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or "1.2.3.4"
        ds.NumberOfFrames = 1
        buffer = io.BytesIO()
        ds.save_as(buffer)
        files.append(buffer.getvalue())
    return files


@pytest.mark.parametrize("sample", list(SAMPLES))
def test_pydicoms_compressed_samples_read_as_simpleitk_and_pydicom_read_them(tmp_path, sample):
    files = _as_series(get_testdata_file(sample))
    paths = _write(files, tmp_path / "series")
    ours = read_series(files).image
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(paths)  # in position order, as written
    theirs = reader.Execute()
    # 1e-4: J2K_pixelrep_mismatch's orientation (0.9272, 0.3746) is 1.2e-5 off unit length; ITK normalises
    # it, we keep the header's values (within slices.ORIENTATION_TOLERANCE), so steps and cosines differ so
    _assert_same_grid(ours, theirs, tolerance=1e-4)
    datasets = [pydicom.dcmread(p) for p in paths]
    assert np.array_equal(_stored(ours, datasets), _stored(theirs, datasets))
    if SAMPLES[sample]:  # lossless: the uncompressed twin's values exactly
        assert np.array_equal(
            _stored(ours, datasets)[1], pydicom.dcmread(get_testdata_file(SAMPLES[sample])).pixel_array
        )
    try:  # pydicom's own reading of the sample, with whichever plugin it picks (CharLS for JPEG-LS, if first)
        expected = pydicom.dcmread(get_testdata_file(sample)).pixel_array
    except (NotImplementedError, RuntimeError):  # pydicom's GDCM plugin refuses 12-bit JPEG Extended
        assert sample in ("JPGExtended.dcm", "JPEG-lossy.dcm")
    else:
        assert np.array_equal(_stored(ours, datasets)[1], expected)


# ---- headers that lie about their pixel data ------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg_ls(tools, tmp_path_factory) -> list[bytes]:
    folder, _ = _compress(["dcmcjpls"], "s16", tmp_path_factory.mktemp("jls"))
    return read_folder(folder)


def _lie(data: bytes, **values) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for key, value in values.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


LIES = {
    "more rows": (
        {"Rows": 40},
        "IM0000: its JPEG-LS stream holds 24 x 20 pixels of 16 bits (1 sample(s) each), but its header says "
        "24 x 40 of at most 16 bits (1 sample(s)); expected a header that describes its pixel data",
    ),
    "fewer columns": ({"Columns": 12}, "IM0000: its JPEG-LS stream holds 24 x 20 pixels of 16 bits"),
    "8 bits allocated": (
        {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7},
        "its header says 24 x 20 of at most 8 bits",
    ),
    "large, within the limits": ({"Rows": 8000, "Columns": 8000}, "but its header says 8000 x 8000 of at most"),
    "huge": (
        {"Rows": 65535, "Columns": 65535},
        "the headers claim 65535 x 65535 x 12 voxels (192.0 GiB as 32 bits); expected at most 4 GiB",
    ),
}


@pytest.mark.parametrize("case", list(LIES))
def test_a_header_that_lies_about_its_stream_is_refused_before_any_codec(jpeg_ls, case):
    values, expected = LIES[case]
    files = [_lie(data, **values) for data in jpeg_ls]
    read_series(jpeg_ls)  # a decoder in the pool, to see it survive
    pids = {d.pid for d in dicom_series.POOL.decoders}
    with pytest.raises(DicomError) as refused:
        read_series(files, names=[f"IM{k:04d}" for k in range(len(files))])
    message = str(refused.value)
    assert expected in message and "\n" not in message, message
    assert {d.pid for d in dicom_series.POOL.decoders} == pids  # no decoder died and was replaced
    assert read_series(jpeg_ls).image.GetSize() == (24, 20, 12)


def test_gdcm_itself_aborts_on_such_a_lie_which_is_why_it_never_sees_one(jpeg_ls, tmp_path):
    path = tmp_path / "lying.dcm"
    path.write_bytes(_lie(jpeg_ls[0], Rows=40))
    script = (
        "import sys, pydicom\n"
        "from pydicom.pixels import get_decoder\n"
        "ds = pydicom.dcmread(sys.argv[1])\n"
        "get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=0, decoding_plugin='gdcm')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGABRT, result


# ---- a series whose UIDs an anonymiser removed ----------------------------------------------------


def test_files_without_uids_are_one_series_by_their_geometry_and_get_no_seg(tools, tmp_path):
    folder, datasets = _compress(["gdcmconv", "--j2k"], "s16", tmp_path)
    files = [without_uids(data) for data in read_folder(folder)]
    series = read_series(files)
    assert (series.study_uid, series.series_uid, set(series.instances)) == ("", "", {""})
    assert np.array_equal(sitk.GetArrayViewFromImage(series.image).astype(np.float64), hu(datasets))
    label = sitk.Image(series.image.GetSize(), sitk.sitkUInt8)
    label.CopyInformation(series.image)
    label[1, 1, 1] = 1
    with pytest.raises(DicomError) as refused:
        write_seg(
            series,
            label,
            series_description="x",
            series_number=1,
            service_name="x",
            service_version="1",
        )
    assert str(refused.value) == (
        "the series' files carry no StudyInstanceUID and no SeriesInstanceUID and no SOPInstanceUID (removed by an "
        "anonymiser?), which a DICOM SEG must reference; expected a series whose files keep their UIDs"
    )
    # the existing refusals hold without UIDs: a slice twice, and a missing one
    with pytest.raises(DicomError, match="lie at the same slice position"):
        read_series([*files, files[4]])
    with pytest.raises(DicomError, match=r"uneven slice spacing \(a missing slice\?\)"):
        read_series(files[:4] + files[5:])
    mixed = [*files[:6], *read_folder(folder)[6:]]
    with pytest.raises(DicomError, match=r"the files hold 2 series \(no SeriesInstanceUID in 6 file\(s\), "):
        read_series(mixed)


class Threshold(TomaatApp):
    input_interface = [Volume("images")]
    output_interface = [LabelVolume("labels")]

    def inference(self, data):
        image = data["images"]
        labels = sitk.Cast(image > 100, sitk.sitkUInt8)
        labels.CopyInformation(image)
        return {"labels": labels}


@pytest_twisted.ensureDeferred
async def test_predict_on_a_jpeg_2000_folder_without_uids_writes_the_labels_and_says_why_no_seg(tools, serve, tmp_path):
    folder, datasets = _compress(["gdcmconv", "--j2k"], "s16", tmp_path / "made")
    series = tmp_path / "anonymised"
    _write([without_uids(data) for data in read_folder(folder)], series)
    service = await serve(Threshold())
    out = tmp_path / "out"
    result = await run_cli(
        ["predict", service.url + "/predict", "--input", f"images={series}", "--out", str(out)], tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "no DICOM SEG for 'labels': the series' files carry no StudyInstanceUID and no SeriesInstanceUID and no "
        "SOPInstanceUID (removed by an anonymiser?)"
    ) in result.stderr
    assert "Traceback" not in result.stderr and not (out / "labels.dcm").exists()
    labels = sitk.ReadImage(str(out / "labels.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(labels), (hu(datasets) > 100).astype(np.uint8))
    assert labels.GetSize() == (24, 20, 12)
    np.testing.assert_allclose(labels.GetSpacing(), (1.0, 0.8, 2.5), atol=1e-5)
    np.testing.assert_allclose(labels.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(labels.GetDirection(), DIRECTION, atol=1e-6)
