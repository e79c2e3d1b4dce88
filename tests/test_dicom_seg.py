"""A label on a DICOM series stored as a SEG by highdicom in a confined decoder, read back and compared voxel by voxel."""

from __future__ import annotations

import io
import os

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_support import ct_series, encode
from scratch_checks import private_tempdir  # noqa: F401 (an autouse fixture)

from tomaat.dicom import DicomError, DicomSeries, Segment, read_series, write_seg
from tomaat.dicom import series as dicom_series

OPTIONS = {
    "series_description": "liver (TOMAAT)",
    "series_number": 901,
    "service_name": "liver-segmenter",
    "service_version": "2.1",
}


@pytest.fixture(scope="module")
def series() -> DicomSeries:
    return read_series(ct_series().files)


def _label(series: DicomSeries, values: dict[int, tuple[slice, slice, slice]], pixel=np.uint8) -> sitk.Image:
    array = np.zeros(sitk.GetArrayViewFromImage(series.image).shape, pixel)
    for value, region in values.items():
        array[region] = value
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(series.image)
    return label


def _rebuilt(seg, series: DicomSeries, values_by_number: dict[int, int]) -> np.ndarray:
    """The label volume on the source grid, from each frame's source reference and segment number."""
    shape = sitk.GetArrayViewFromImage(series.image).shape
    volume = np.zeros(shape, np.int64)
    slice_of = {uid: k for k, uid in enumerate(series.instances)}
    frames = seg.pixel_array.reshape(-1, *shape[1:])
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        identified = item if "SegmentIdentificationSequence" in item else shared  # one segment: said once
        number = identified.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        k = slice_of[source]
        np.testing.assert_allclose(position, series.image.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-4)
        assert not (volume[k][frame > 0]).any(), "two segments claim one voxel"
        volume[k][frame > 0] = values_by_number[number]
    return volume


def test_a_label_with_gaps_in_its_values_comes_back_voxel_for_voxel(series):
    regions = {1: (slice(2, 5), slice(3, 9), slice(4, 12)), 3: (slice(6, 10), slice(10, 18), slice(1, 20))}
    label = _label(series, regions)
    data = write_seg(series, label, **OPTIONS)
    assert data[128:132] == b"DICM"
    seg = hd.seg.segread(io.BytesIO(data))
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "label 1"), (2, "label 3")]
    for item in seg.SegmentSequence:
        category, kind = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator, category.CodeMeaning) == (
            "91723000",
            "SCT",
            "Anatomical Structure",
        )
        assert (kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning) == ("85756007", "SCT", "Tissue")
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("liver-segmenter", "2.1")
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == series.study_uid and seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert seg.SeriesInstanceUID != series.series_uid and seg.SeriesNumber == 901
    assert seg.SeriesDescription == "liver (TOMAAT)"
    assert (seg.Manufacturer, seg.ManufacturerModelName) == ("TOMAAT", "liver-segmenter")
    assert seg.SoftwareVersions[1] == "2.1"
    assert seg.PatientID == "TOMAAT-1"
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(series.instances)
    # every frame on the right slice, with the right pixels for its segment
    rebuilt = _rebuilt(seg, series, {1: 1, 2: 3})
    assert np.array_equal(rebuilt, sitk.GetArrayViewFromImage(label))
    # and highdicom's own mapping agrees
    numbers = seg.get_pixels_by_source_instance(list(series.instances), combine_segments=True)
    assert np.array_equal(np.array([0, 1, 3])[numbers], sitk.GetArrayViewFromImage(label))
    assert seg.NumberOfFrames == 3 + 4  # omitted empty frames: one per slice a segment is on
    for decoder in dicom_series.POOL.decoders:
        assert os.listdir(decoder.folder) == []


def test_described_segments_keep_their_names_codes_and_an_empty_segment(series):
    liver = ("10200004", "SCT", "Liver")
    organ = ("91723000", "SCT", "Anatomical Structure")
    segments = [
        Segment(7, "liver", organ, liver),
        Segment(300, "tumour", organ, ("108369006", "SCT", "Neoplasm")),
        Segment(2, "Milz (spleen) ü", organ, ("78961009", "SCT", "Spleen")),
    ]
    regions = {7: (slice(0, 3), slice(0, 5), slice(0, 5)), 300: (slice(11, 12), slice(19, 20), slice(23, 24))}
    label = _label(series, regions, np.uint16)  # 300 does not fit a byte: the label goes as 16 bits
    array = sitk.GetArrayFromImage(label)
    seg = hd.seg.segread(io.BytesIO(write_seg(series, label, segments, series_uid="2.25.12345", **OPTIONS)))
    assert seg.SeriesInstanceUID == "2.25.12345" and seg.SpecificCharacterSet == "ISO_IR 192"
    names = [
        (s.SegmentNumber, s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning)
        for s in seg.SegmentSequence
    ]
    assert names == [(1, "liver", "Liver"), (2, "tumour", "Neoplasm"), (3, "Milz (spleen) ü", "Spleen")]
    assert np.array_equal(_rebuilt(seg, series, {1: 7, 2: 300, 3: 2}), array)
    frames = {
        item.SegmentIdentificationSequence[0].ReferencedSegmentNumber for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert frames == {1, 2}  # the spleen was looked for and not found: described, no frame


def test_label_values_no_segment_describes_become_label_n(series):
    label = _label(series, {5: (slice(2, 3), slice(0, 4), slice(0, 4)), 1: (slice(0, 1), slice(0, 2), slice(0, 2))})
    seg = hd.seg.segread(io.BytesIO(write_seg(series, label, [Segment(5, "five")], **OPTIONS)))
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "five"), (2, "label 1")]
    assert np.array_equal(_rebuilt(seg, series, {1: 5, 2: 1}), sitk.GetArrayViewFromImage(label))
    assert "SpecificCharacterSet" not in seg or seg.SpecificCharacterSet != "ISO_IR 192"  # ASCII: the sources' own


def test_a_service_without_a_version_still_gets_a_seg(series):
    label = _label(series, {1: (slice(2, 3), slice(0, 4), slice(0, 4))})
    seg = hd.seg.segread(io.BytesIO(write_seg(series, label, **{**OPTIONS, "service_version": ""})))
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "unspecified"
    assert seg.SoftwareVersions.startswith("tomaat ")


def test_a_label_of_another_integer_type_is_taken(series):
    label = sitk.Cast(_label(series, {4: (slice(5, 6), slice(5, 7), slice(5, 9))}), sitk.sitkInt32)
    seg = hd.seg.segread(io.BytesIO(write_seg(series, label, **OPTIONS)))
    assert np.array_equal(_rebuilt(seg, series, {1: 4}), sitk.GetArrayViewFromImage(label))


def _moved(series, change):
    label = _label(series, {1: (slice(1, 2), slice(1, 2), slice(1, 2))})
    change(label)
    return label


OFF_GRID = {
    "origin": (lambda i: i.SetOrigin(np.add(i.GetOrigin(), (0, 0.001, 0))), "the label's origin (-120.5, 33.251, 410)"),
    "direction": (lambda i: i.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1)), "the label's direction (1, 0, 0, 0, 1, 0"),
    "spacing": (lambda i: i.SetSpacing((1.0, 0.8, 2.0)), "the label's spacing (1, 0.8, 2) differs from the series'"),
}


@pytest.mark.parametrize("case", list(OFF_GRID))
def test_a_label_off_the_series_grid_is_refused(series, case):
    change, expected = OFF_GRID[case]
    with pytest.raises(DicomError) as refused:
        write_seg(series, _moved(series, change), **OPTIONS)
    assert expected in str(refused.value)
    assert "expected a label on exactly the series' grid (resample it onto the image first)" in str(refused.value)


def test_labels_that_a_seg_cannot_hold_are_refused(series):
    small = sitk.Image(24, 20, 11, sitk.sitkUInt8)
    small.CopyInformation(series.image[:, :, :11])
    with pytest.raises(
        DicomError, match=r"the label is 24 x 20 x 11 voxels, the series 24 x 20 x 12; expected a label"
    ):
        write_seg(series, small, **OPTIONS)
    floating = sitk.Cast(_label(series, {}), sitk.sitkFloat32)
    with pytest.raises(DicomError, match="the label's voxels are 32-bit float; expected integer label values"):
        write_seg(series, floating, **OPTIONS)
    negative = sitk.Cast(_label(series, {}), sitk.sitkInt32)
    negative[0, 0, 0] = -1
    with pytest.raises(DicomError, match="the label's values run from -1 to 0; expected label values from 0 to 65535"):
        write_seg(series, negative, **OPTIONS)
    huge = sitk.Cast(_label(series, {}), sitk.sitkUInt32)
    huge[0, 0, 0] = 70000
    with pytest.raises(DicomError, match="run from 0 to 70000"):
        write_seg(series, huge, **OPTIONS)
    with pytest.raises(DicomError, match="the label has no non-zero voxel: nothing to store"):
        write_seg(series, _label(series, {}), **OPTIONS)
    two = _label(series, {1: (slice(0, 1), slice(0, 1), slice(0, 1)), 5: (slice(2, 3), slice(0, 1), slice(0, 1))})
    with pytest.raises(DicomError, match="label value 1 is described twice"):
        write_seg(series, two, [Segment(1, "one"), Segment(1, "again"), Segment(5, "five")], **OPTIONS)
    with pytest.raises(DicomError, match="series description .*: expected at most 64 characters, with no backslash"):
        write_seg(series, two, **{**OPTIONS, "series_description": "a\\b"})  # a value separator
    with pytest.raises(DicomError, match="segment 1's name 'x{65}': expected at most 64 characters"):
        write_seg(series, two, [Segment(1, "x" * 65)], **OPTIONS)
    with pytest.raises(DicomError, match="series UID '1.2.x': expected a DICOM UID"):
        write_seg(series, two, series_uid="1.2.x", **OPTIONS)
    with pytest.raises(DicomError, match="series number 0: expected a whole number"):
        write_seg(series, two, **{**OPTIONS, "series_number": 0})


def test_a_series_without_a_frame_of_reference_is_a_volume_but_gets_no_seg():
    datasets = ct_series().datasets
    for dataset in datasets:
        del dataset.FrameOfReferenceUID  # as series written by GDCM (SimpleITK) often are
    volume = read_series([encode(d) for d in datasets])
    assert volume.frame_of_reference_uid == "" and volume.image.GetSize() == (24, 20, 12)
    with pytest.raises(DicomError, match="no FrameOfReferenceUID, which a DICOM SEG must share with its images"):
        write_seg(volume, _label(volume, {1: (slice(2, 5), slice(3, 9), slice(4, 12))}), **OPTIONS)
