"""A DICOM series read in a confined decoder: exact voxels and geometry, GDCM's agreement, and each refusal."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_support import (
    DIRECTION,
    INTERCEPT,
    NORMAL,
    ct_datasets,
    ct_series,
    encode,
    position,
    shuffled,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRBigEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)
from scratch_checks import private_tempdir  # noqa: F401 (an autouse fixture)

from tomaat.dicom import DicomError, folder_paths, read_folder, read_series
from tomaat.dicom import series as dicom_series
from tomaat.files import confined


def _empty_decoder_folders():
    for decoder in dicom_series.POOL.decoders:
        assert os.path.dirname(decoder.folder) == confined._BASE
        assert os.listdir(decoder.folder) == []


def test_the_volume_holds_the_hu_values_on_the_series_geometry():
    built = ct_series()
    series = read_series(built.files)
    image = series.image
    assert image.GetSize() == (24, 20, 12)
    assert image.GetPixelID() == sitk.sitkInt16  # slope 1, whole intercept, values that fit
    np.testing.assert_allclose(image.GetSpacing(), (1.0, 0.8, 2.5), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), (-120.5, 33.25, 410.0), atol=1e-9)
    np.testing.assert_allclose(image.GetDirection(), DIRECTION, atol=1e-12)
    assert abs(image.GetDirection()[1]) > 0.3 and abs(image.GetDirection()[5]) > 0.1  # oblique, really
    assert np.array_equal(sitk.GetArrayViewFromImage(image), built.hu)
    assert series.instances == tuple(built.instances)  # in slice order, not arrival nor InstanceNumber order
    assert [built.arrival[i] for i in series.order] == list(range(12))
    assert series.files == tuple(built.files[i] for i in series.order)
    first = built.datasets[0]
    assert (series.study_uid, series.series_uid) == (first.StudyInstanceUID, first.SeriesInstanceUID)
    assert series.frame_of_reference_uid == first.FrameOfReferenceUID
    assert (series.modality, series.description) == ("CT", "synthetic oblique CT")
    assert series.sop_classes == ("1.2.840.10008.5.1.4.1.1.2",) * 12
    # each voxel's physical point is where the DICOM header puts it
    k, row, column = 7, 5, 9
    point = np.array([float(v) for v in built.datasets[k].ImagePositionPatient])
    point += column * 1.0 * np.array(DIRECTION[0::3]) + row * 0.8 * np.array(DIRECTION[1::3])
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((column, row, k)), point, atol=1e-5)
    _empty_decoder_folders()


def test_simpleitk_gdcm_reads_the_same_volume(tmp_path):
    built = ct_series()
    folder = tmp_path / "series"
    folder.mkdir()
    for index, data in enumerate(built.files):
        (folder / f"IM{index:04d}").write_bytes(data)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    gdcm = reader.Execute()
    ours = read_series(read_folder(folder)).image
    assert ours.GetSize() == gdcm.GetSize()
    for a, b in ((ours.GetSpacing(), gdcm.GetSpacing()), (ours.GetOrigin(), gdcm.GetOrigin())):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(ours.GetDirection(), gdcm.GetDirection(), atol=1e-6)
    assert np.array_equal(
        sitk.GetArrayViewFromImage(ours).astype(np.int64), sitk.GetArrayViewFromImage(gdcm).astype(np.int64)
    )


def test_any_arrival_order_gives_the_same_volume():
    datasets = ct_datasets(slices=6)
    images = [read_series(shuffled(datasets, seed)).image for seed in (1, 2, 3)]
    for image in images[1:]:
        assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(images[0]))
        assert image.GetOrigin() == images[0].GetOrigin()


def test_a_fractional_rescale_gives_float32_and_per_slice_rescales_are_applied():
    datasets = ct_datasets(slices=4)
    for k, ds in enumerate(datasets):
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -10.25 * k
    series = read_series(shuffled(datasets))
    array = sitk.GetArrayViewFromImage(series.image)
    assert array.dtype == np.float32
    expected = np.stack([ds.pixel_array * 0.5 - 10.25 * k for k, ds in enumerate(datasets)])
    assert np.array_equal(array, expected.astype(np.float32))


def test_values_beyond_int16_give_int32():
    datasets = ct_datasets(slices=3)
    for ds in datasets:
        ds.RescaleIntercept = 40000
    array = sitk.GetArrayViewFromImage(read_series(shuffled(datasets)).image)
    assert array.dtype == np.int32
    assert np.array_equal(array, np.stack([ds.pixel_array.astype(np.int32) + 40000 for ds in datasets]))


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless])
def test_other_uncompressed_syntaxes_and_rle_are_read(syntax):
    datasets = ct_datasets(slices=3)
    expected = np.stack([ds.pixel_array.astype(np.int32) + INTERCEPT for ds in datasets])
    for ds in datasets:
        pixels = ds.pixel_array
        ds.file_meta.TransferSyntaxUID = syntax
        if syntax == RLELossless:
            ds.compress(syntax, pixels, encoding_plugin="pydicom")
        elif syntax == ExplicitVRBigEndian:
            ds.PixelData = pixels.astype(">i2").tobytes()
    assert np.array_equal(sitk.GetArrayViewFromImage(read_series(shuffled(datasets)).image), expected)


# ---- refusals: what was wrong, and what was expected ---------------------------------------------


def _without(key):
    def change(datasets):
        delattr(datasets[4], key)

    return change


def _set(index, **values):
    def change(datasets):
        for key, value in values.items():
            setattr(datasets[index], key, value)

    return change


def _multiframe(datasets):
    ds = datasets[2]
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2


def _smaller(datasets):
    ds = datasets[5]
    ds.Rows = 10
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def _duplicate_position(datasets):
    datasets[6].ImagePositionPatient = copy.deepcopy(datasets[5].ImagePositionPatient)


def _missing_slice(datasets):
    del datasets[6]


def _uneven(datasets):
    datasets[6].ImagePositionPatient = position(6.2)


def _two_series(datasets):
    other = generate_uid()
    for ds in datasets[:4]:
        ds.SeriesInstanceUID = other


def _sheared(datasets):
    for k, ds in enumerate(datasets):
        ds.ImagePositionPatient = [float(v) + 0.4 * k for v in ds.ImagePositionPatient[:2]] + [
            ds.ImagePositionPatient[2]
        ]


def _colour(datasets):
    ds = datasets[3]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(ds.Rows * ds.Columns * 3)


def _htj2k(datasets):
    datasets[8].file_meta.TransferSyntaxUID = HTJ2KLossless
    datasets[8].PixelData = encapsulate([b"\xff\x4f\xff\x51"])


def _jpeg_without_a_frame(datasets):
    datasets[8].file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    datasets[8].PixelData = encapsulate([b"\xff\xd8\xff\xd9"])


def _truncated_pixels(datasets):
    datasets[9].PixelData = datasets[9].PixelData[:100]


def _one_slice(datasets):
    del datasets[1:]


def _tilted_orientation(datasets):
    datasets[7].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]


REFUSALS = {
    "no IPP": (_without("ImagePositionPatient"), "no ImagePositionPatient; expected ImagePositionPatient"),
    "no IOP": (_without("ImageOrientationPatient"), "no ImageOrientationPatient; expected"),
    "no pixel spacing": (_without("PixelSpacing"), "no PixelSpacing; expected"),
    "no pixel data": (_without("PixelData"), "no image in it (no Pixel Data; CT Image Storage)"),
    "multi-frame": (_multiframe, "2 frames in one instance (multi-frame, e.g. Enhanced CT or MR): not supported yet"),
    "rows": (_smaller, "24 x 10 pixels, but file"),
    "pixel spacing": (_set(5, PixelSpacing=[0.8, 1.01]), "expected one pixel spacing for the whole series"),
    "orientation": (_tilted_orientation, "mixed orientations (a localizer?); expected one orientation"),
    "frame of reference": (_set(2, FrameOfReferenceUID="1.2.3.4"), "expected one frame of reference"),
    "same position": (_duplicate_position, "lie at the same slice position"),
    "missing slice": (_missing_slice, "uneven slice spacing (a missing slice?): 5 mm between file"),
    "uneven": (_uneven, "uneven slice spacing: 3 mm between file"),
    "two series": (_two_series, "the files hold 2 series ("),
    "sheared": (_sheared, "the slices are sheared (gantry tilt?)"),
    "colour": (_colour, "a colour image (RGB, 3 samples per pixel); expected a grayscale image"),
    "not decoded": (
        _htj2k,
        "transfer syntax High-Throughput JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.201) is not one this reader decodes; expected "
        "uncompressed, deflated, RLE, JPEG (baseline, extended, lossless), JPEG-LS or JPEG 2000 pixel data",
    ),
    "no JPEG frame": (
        _jpeg_without_a_frame,
        "file 9 of 12: its JPEG stream has no readable frame header; expected JPEG Baseline (Process 1) pixel data",
    ),
    "truncated pixels": (_truncated_pixels, "file 10 of 12: its pixel data cannot be decoded (ValueError: "),
    "one slice": (_one_slice, "file 1 of 1: one slice: expected a volume of at least 2 slices"),
    "slope 0": (_set(1, RescaleSlope=0), "expected one finite number each, the slope not 0"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_files_that_are_not_one_volume_are_refused_with_a_clear_line(case):
    change, expected = REFUSALS[case]
    datasets = ct_datasets()
    change(datasets)
    files = [encode(ds) for ds in datasets]
    with pytest.raises(DicomError) as refused:
        read_series(files)
    message = str(refused.value)
    assert expected in message, message
    assert "\n" not in message and "Traceback" not in message
    _empty_decoder_folders()


def test_a_missing_slice_names_the_positions_on_either_side():
    datasets = ct_datasets()
    del datasets[6]
    names = [f"IM{k:02d}" for k in range(len(datasets))]
    along = [float(np.array([float(v) for v in ds.ImagePositionPatient]) @ NORMAL) for ds in datasets]
    with pytest.raises(DicomError) as refused:
        read_series([encode(ds) for ds in datasets], names=names)
    message = str(refused.value)
    assert f"between IM05 at {along[5]:.3f}".rstrip("0") in message and "and IM06 at" in message, message
    assert "expected 2.5 mm between every pair of neighbouring slices" in message


def test_a_file_that_is_not_dicom_is_named():
    files = [encode(ds) for ds in ct_datasets(slices=4)]
    files[2] = b"\x00" * 128 + b"NOPE" + b"\x00" * 200
    with pytest.raises(DicomError, match=r"^series/b: not a DICOM file \(no 'DICM' marker"):
        read_series(files, names=["series/x", "series/y", "series/b", "series/z"])
    with pytest.raises(DicomError, match="file 1 of 2: not a DICOM file"):
        read_series([b"just text", files[0]])
    garbled = files[1][:132] + bytes(range(256)) * 2  # pydicom reads on as far as it can
    with pytest.raises(
        DicomError, match=r"file 2 of 2: no image in it \(no Pixel Data; no SOPClassUID either: a trunc"
    ):
        read_series([files[0], garbled])


def test_a_structured_report_and_a_segmentation_are_not_images():
    files = [encode(ds) for ds in ct_datasets(slices=3)]
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    report.SOPClassUID, report.SOPInstanceUID = BasicTextSRStorage, generate_uid()
    report.Modality, report.SeriesInstanceUID = "SR", generate_uid()
    with pytest.raises(DicomError, match=r"file 4 of 4: no image in it \(no Pixel Data; Basic Text SR Storage\)"):
        read_series([*files, encode(report)])
    segmentation = ct_datasets(slices=1)[0]
    segmentation.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    with pytest.raises(DicomError, match=r"a segmentation \(Segmentation Storage\), not an image; expected the images"):
        read_series([*files, encode(segmentation)])


def test_the_same_instance_twice_is_refused():
    files = [encode(ds) for ds in ct_datasets(slices=3)]
    with pytest.raises(DicomError, match=r"file 4 of 4 and file 2 of 4 are the same instance \(SOPInstanceUID"):
        read_series([*files, files[1]])


def test_no_files_are_refused_before_any_decoder():
    with pytest.raises(DicomError, match="no files: expected the DICOM files of one series"):
        read_series([])


# ---- the folder, the decoder, the process -------------------------------------------------------


def test_a_folder_is_read_as_bytes_in_path_order_without_dicomdir_and_hidden_files(tmp_path):
    built = ct_series(slices=4)
    for index, data in enumerate(built.files):
        part = tmp_path / ("a" if index < 2 else "b")
        part.mkdir(exist_ok=True)
        (part / f"{index}.dcm").write_bytes(data)
    (tmp_path / "DICOMDIR").write_bytes(b"an index, not an image")
    (tmp_path / ".DS_Store").write_bytes(b"desktop litter")
    (tmp_path / "b" / "link.dcm").symlink_to(tmp_path / "a" / "0.dcm")
    assert folder_paths(tmp_path) == ["a/0.dcm", "a/1.dcm", "b/2.dcm", "b/3.dcm"]
    assert read_folder(tmp_path) == built.files
    assert read_series(read_folder(tmp_path), names=folder_paths(tmp_path)).image.GetSize() == (24, 20, 4)
    with pytest.raises(DicomError, match="not a folder; expected a folder of DICOM files"):
        read_folder(tmp_path / "a" / "0.dcm")


def test_the_dicom_decoder_can_open_no_file_and_reach_no_port_but_its_own_folder(tmp_path):
    if not confined.landlock_available():
        pytest.skip("this kernel offers no Landlock")
    outside = tmp_path / "outside.txt"
    outside.write_text("not for decoders")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        for path in (str(outside), "/etc/passwd", sys.executable, confined.__file__):
            answer = confined.probe(path, port, dicom_series.POOL)
            assert answer["landlock"] >= 1
            assert answer["open"] is False, path
            assert answer["connect"] is False
        own = dicom_series.POOL.decoders[0].folder
        assert confined.probe(own, port, dicom_series.POOL)["open"] is True
    assert all(d.process.args[2] == "tomaat.dicom.decoder_process" for d in dicom_series.POOL.decoders)


def test_a_decoder_killed_mid_series_is_a_clear_error_and_the_next_series_reads():
    built = ct_series(slices=3)
    read_series(built.files)
    (decoder,) = [d for d in dicom_series.POOL.decoders if not d.busy][:1]
    os.kill(decoder.pid, signal.SIGSTOP)
    for other in dicom_series.POOL.decoders:
        if other is not decoder:
            dicom_series.POOL._discard(other)  # the stopped one is the only one to take the files
    outcome = {}

    def decode():
        try:
            read_series(built.files)
        except DicomError as error:
            outcome["error"] = error

    worker = threading.Thread(target=decode)
    worker.start()
    deadline = time.monotonic() + 10
    while not decoder.busy and time.monotonic() < deadline:
        worker.join(0.01)
    assert decoder.busy
    os.kill(decoder.pid, signal.SIGKILL)
    worker.join(10)
    assert str(outcome["error"]).startswith("the DICOM decoder stopped on these files")
    assert decoder not in dicom_series.POOL.decoders
    assert read_series(built.files).image.GetSize() == (24, 20, 3)


@pytest.mark.parametrize(
    "change",
    [
        {"shape": [3, 20, 25]},
        {"dtype": "<f8"},
        {"order": [0, 0, 1]},
        {"study_uid": "1.2.3; rm -rf"},
        {"direction": [0.0] * 9},
        {"spacing": [1.0, float("nan"), 2.5]},
    ],
)
def test_an_answer_of_the_wrong_shape_is_nonsense(monkeypatch, change):
    run = dicom_series.POOL.run

    def lying(message, *args, **kwargs):
        answer, decoder = run(message, *args, **kwargs)
        return {**answer, **change}, decoder

    monkeypatch.setattr(dicom_series.POOL, "run", lying)
    with pytest.raises(DicomError, match="^the DICOM decoder answered nonsense on these files$"):
        read_series(ct_series(slices=3).files)
    _empty_decoder_folders()


def test_importing_tomaat_dicom_loads_no_dicom_library():
    script = (
        "import sys\n"
        "import tomaat.dicom\n"
        "from tomaat.dicom import read_series, write_seg, DicomError\n"
        "print(sorted(m for m in ('pydicom', 'highdicom') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_what_goes_to_a_prediction_server_is_voxels_and_geometry_and_no_dicom_header():
    from tomaat.protocol.volumes import write_image

    made = ct_series()
    sent = write_image(read_series(made.files).image, "mha")  # what the client uploads for the series
    header = sent[: sent.index(b"ElementDataFile")]
    for private in (
        b"Phantom",
        b"TOMAAT-1",
        b"PatientName",
        b"0010|",
        b"0020|000d",
        made.datasets[0].StudyInstanceUID.encode(),
    ):
        assert private not in sent, private
    assert header.count(b"\n") <= 16, header  # the MHA keys of size, type, spacing, origin and direction only
