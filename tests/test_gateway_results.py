"""RTSTRUCT and SR back into Orthanc by C-STORE, beside the SEG, as the routing rule asks: the RTSTRUCT's contours,
rasterised back onto the source grid here (OpenCV's fillPoly, not rt-utils), match the label (Dice >= 0.98);
the SR's volumes are the label's voxel count times the voxel volume."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pydicom
import pytest
from browser_support import free_port
from gateway_support import Gateway, gateway_config, wait_for
from orthanc_support import make_ct_series
from test_gateway import (
    THRESHOLD,
    assert_seg_matches,
    ct_rule,
    orthanc,
    put_in_orthanc,
    results_in,
    spool_empty,
    threshold_server,
)

__all__ = ["orthanc", "threshold_server"]  # the fixtures


def rasterised(rtstruct, series) -> dict[str, np.ndarray]:
    """Each ROI's contours filled on the source grid (z, y, x), by its name."""
    direction = np.array(series.direction).reshape(3, 3) @ np.diag(series.spacing)
    to_index = np.linalg.inv(direction)
    names = {int(r.ROINumber): str(r.ROIName) for r in rtstruct.StructureSetROISequence}
    masks = {}
    for roi in rtstruct.ROIContourSequence:
        mask = np.zeros(series.volume.shape, np.uint8)
        for contour in roi.ContourSequence:
            points = np.array(contour.ContourData, float).reshape(-1, 3)
            index = (to_index @ (points - np.array(series.origin)).T).T
            slices = np.round(index[:, 2])
            assert np.allclose(index[:, 2], slices, atol=1e-3) and len(set(slices)) == 1  # on one source slice
            k = int(slices[0])
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == series.slice_uids[k]
            cv2.fillPoly(mask[k], [np.round(index[:, :2]).astype(np.int32)], 1)
        masks[names[int(roi.ReferencedROINumber)]] = mask
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def volumes(sr) -> dict[str, float]:
    """Each measurement group's tracking identifier and its Volume (ml), walking the SR's content tree."""
    found = {}

    def walk(items, name=None):
        for item in items:
            meaning = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "TEXT" and meaning == "Tracking Identifier":
                name = item.TextValue
            if item.ValueType == "NUM" and meaning == "Volume":
                measured = item.MeasuredValueSequence[0]
                assert measured.MeasurementUnitsCodeSequence[0].CodeValue == "ml"
                found[name] = float(measured.NumericValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence, name)

    walk(sr.ContentSequence)
    return found


def test_seg_rtstruct_and_sr_arrive_in_orthanc_and_match_the_label(orthanc, threshold_server, tmp_path):
    port = free_port()
    rule = ct_rule(threshold_server, outputs=["seg", "rtstruct", "sr"])
    gateway = Gateway(gateway_config(tmp_path, port, orthanc, [rule]), tmp_path)
    try:
        orthanc.declare("tomaat", "TOMAAT", port)
        series = make_ct_series(shuffle=True, seed=21)
        orthanc.send("tomaat", put_in_orthanc(orthanc, series))
        found = {kind: results_in(orthanc, series.study_uid, kind) for kind in ("SEG", "RTSTRUCT", "SR")}
        wait_for(lambda: spool_empty(gateway), 30, "the spool emptied")
    finally:
        gateway.stop()
    label = series.volume >= THRESHOLD
    ((seg,),) = (orthanc.instance_files(s) for s in found["SEG"])
    assert_seg_matches(seg, series)

    ((rt_bytes,),) = (orthanc.instance_files(s) for s in found["RTSTRUCT"])
    rtstruct = pydicom.dcmread(io.BytesIO(rt_bytes))
    assert rtstruct.StudyInstanceUID == series.study_uid and rtstruct.SeriesNumber == 9910
    masks = rasterised(rtstruct, series)
    assert set(masks) == {"label 1"}
    assert dice(masks["label 1"].astype(bool), label) >= 0.98

    ((sr_bytes,),) = (orthanc.instance_files(s) for s in found["SR"])
    sr = pydicom.dcmread(io.BytesIO(sr_bytes))
    assert sr.StudyInstanceUID == series.study_uid and sr.SeriesNumber == 9920
    voxel_ml = float(np.prod(series.spacing)) / 1000.0
    # DICOM's DS holds 16 characters: the volume as written, to its last digit
    assert volumes(sr) == {"label 1": pytest.approx(np.count_nonzero(label) * voxel_ml, rel=1e-9)}
    assert len(found["SEG"]) == len(found["RTSTRUCT"]) == len(found["SR"]) == 1
