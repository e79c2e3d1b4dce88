"""RTSTRUCT and SR results of a label volume: asked for here, built in the gateway's confined decoder.

`build` (gateway side) checks each label volume lies on the series' grid, counts each segment's voxels
and sends the source instances, the label and the numbers to the decoder. `rtstruct` and `sr` run in the
decoder, the only process that parses the sources:

- RTSTRUCT by rt-utils (made for it; radiotherapy planning systems read it where they ignore SEG): each
  segment an ROI named as the segment, its contours traced by OpenCV on each source slice.
- SR by highdicom: a TID 1500 measurement report, one measurement group (TID 1501) a segment, tracked by
  its name, holding its volume in ml: voxel count x voxel volume (the product of the spacing), so it says
  what the label holds, with no smoothing or partial voxels.
"""

from __future__ import annotations

import os

import numpy as np

RTSTRUCT_SERIES_NUMBER = 9910
SR_SERIES_NUMBER = 9920
_DEFAULT_CATEGORY = ["91723000", "SCT", "Anatomical Structure"]
_DEFAULT_TYPE = ["85756007", "SCT", "Tissue"]


# ---- the gateway's side ------------------------------------------------------------------------------


def _segments(element, array: np.ndarray) -> list[dict]:
    """The segments of a label: those the service describes, then each other label value present as "label N"."""
    present = [int(v) for v in np.unique(array) if v]
    described = list(element.segments) if element is not None and element.segments else []
    values = [s.value for s in described]
    segments = [
        {"value": s.value, "name": s.name, "category": list(s.category), "type": list(s.type)} for s in described
    ]
    segments += [
        {"value": v, "name": f"label {v}", "category": _DEFAULT_CATEGORY, "type": _DEFAULT_TYPE}
        for v in present
        if v not in values
    ]
    for segment in segments:
        segment["voxels"] = int(np.count_nonzero(array == segment["value"]))
    return segments


def build(kinds, result, info, series) -> list[tuple[str, bytes]]:
    """(kind, Part 10 bytes) of each RTSTRUCT and SR asked for, for each LabelVolume output."""
    from ..dicom import loop
    from ..dicom.errors import DicomError
    from ..dicom.series import _label_array
    from ..files import confined
    from .decoded import RESULTS_POOL

    described = {e.field: e for e in info.outputs if e.output_type == "LabelVolume"}
    made = []
    voxel_ml = float(np.prod(series.image.GetSpacing())) / 1000.0
    for index, output in enumerate(result.of_type("LabelVolume")):
        array = _label_array(series, output.value)  # DicomError unless on exactly the series' grid
        segments = _segments(described.get(output.name), array)
        if not segments:
            continue
        for segment in segments:
            segment["ml"] = segment["voxels"] * voxel_ml
        description = loop.seg_description(info, output.name, output.label)
        for kind in kinds:
            message = {
                "op": kind,
                "instances": list(series.instances),
                "shape": list(array.shape),
                "segments": segments,
                "params": {
                    "series_number": (RTSTRUCT_SERIES_NUMBER if kind == "rtstruct" else SR_SERIES_NUMBER) + index,
                    "series_description": description,
                    "algorithm_name": str(info.metadata.get("name") or "tomaat service")[:64],
                    "algorithm_version": str(info.metadata.get("version") or "unspecified")[:64],
                },
            }
            files = {f"dicom-{i}": data for i, data in enumerate(series.files)}
            files["label"] = array.astype("<u2").tobytes()
            try:
                answer, decoder = RESULTS_POOL.run(message, files=files)
            except confined.DecodeFailed as failure:
                raise DicomError(f"the DICOM decoder {failure.reason} building the {kind.upper()}") from None
            try:
                if answer.get("ok") is not True:
                    raise DicomError(
                        f"the {kind.upper()} could not be built: {str(answer.get('refused') or answer.get('error'))[:300]}"
                    )
                size = answer.get("size")
                if not isinstance(size, int) or not 132 <= size <= 1 << 30:
                    raise DicomError(f"the DICOM decoder answered nonsense building the {kind.upper()}")
                mapped = confined._output(decoder, size)
                assert mapped is not None
                try:
                    data = bytes(mapped)
                finally:
                    mapped.close()
                if data[128:132] != b"DICM":
                    raise DicomError(f"the DICOM decoder answered nonsense building the {kind.upper()}")
            finally:
                RESULTS_POOL.release(decoder)
            made.append((kind, data))
    return made


# ---- the decoder's side ------------------------------------------------------------------------------


def _sources(paths: list[str], message: dict):
    """The source datasets in the label's slice order (by SOPInstanceUID), and the label (z, y, x)."""
    import pydicom

    from .decoder_process import Refused

    datasets = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        datasets[str(ds.SOPInstanceUID)] = ds
    try:
        ordered = [datasets[uid] for uid in message["instances"]]
    except KeyError:
        raise Refused("the instances are not those the label was made on") from None
    return ordered


def _label(path: str, shape) -> np.ndarray:
    label = np.fromfile(path, dtype="<u2")
    if label.size != int(np.prod(shape)):
        from .decoder_process import Refused

        raise Refused("the label is not the size of the series")
    return label.reshape(shape)


def rtstruct(paths: list[str], label_path: str, message: dict, out: str) -> dict:
    from rt_utils import ds_helper, image_helper
    from rt_utils.rtstruct import RTStruct

    ordered = _sources(paths, message)
    label = _label(label_path, message["shape"])
    # rt-utils keeps its series sorted by position along the normal; its mask is (rows, columns, slices) so.
    positions = [image_helper.get_slice_position(ds) for ds in ordered]
    order = list(np.argsort(positions, kind="stable"))
    series_data = [ordered[k] for k in order]
    structure = RTStruct(series_data, ds_helper.create_rtstruct_dataset(series_data))
    _mend_pixel_spacing(series_data, image_helper)
    params = message["params"]
    structure.set_series_description(params["series_description"])
    structure.ds.SeriesNumber = params["series_number"]
    structure.ds.Manufacturer = "TOMAAT"
    structure.ds.ManufacturerModelName = params["algorithm_name"]
    structure.ds.SoftwareVersions = params["algorithm_version"]
    stacked = np.transpose(label[order], (1, 2, 0))
    for segment in message["segments"]:
        mask = stacked == segment["value"]
        if mask.any():
            structure.add_roi(mask=mask, name=segment["name"], approximate_contours=False)
    structure.ds.save_as(out, enforce_file_format=True)
    return {"size": os.path.getsize(out)}


def _mend_pixel_spacing(series_data, image_helper) -> None:
    """rt-utils 1.2.7 steps along a row (x) by PixelSpacing[0], the spacing between rows (y), and down a column
    by PixelSpacing[1]: on non-square pixels its contours come out stretched. Where its pixel-to-patient matrix
    shows that, its copies of the sources (read here, sent nowhere) get their two spacings swapped, so it places
    each contour point where the pixel is; a release that reads PixelSpacing right is left alone."""
    first = series_data[0]
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    if row_spacing == column_spacing:
        return
    row_direction = np.array([float(v) for v in first.ImageOrientationPatient[:3]])
    step = np.asarray(image_helper.get_pixel_to_patient_transformation_matrix(series_data))[:3, 0]
    if np.allclose(step, row_direction * row_spacing, atol=1e-4) and not np.allclose(
        step, row_direction * column_spacing, atol=1e-4
    ):
        for ds in series_data:
            ds.PixelSpacing = [ds.PixelSpacing[1], ds.PixelSpacing[0]]


def sr(paths: list[str], label_path: str, message: dict, out: str) -> dict:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ordered = _sources(paths, message)
    params = message["params"]
    algorithm = hd.sr.AlgorithmIdentification(name=params["algorithm_name"], version=params["algorithm_version"])
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=segment["name"]),
            finding_type=hd.sr.CodedConcept(*segment["type"]),
            finding_category=hd.sr.CodedConcept(*segment["category"]),
            algorithm_id=algorithm,
            measurements=[
                hd.sr.Measurement(
                    name=codes.SCT.Volume,
                    value=float(segment["ml"]),
                    unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter"),
                    algorithm_id=algorithm,
                )
            ],
        )
        for segment in message["segments"]
    ]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.cid270.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=hd.UID(), name=params["algorithm_name"]
                ),
            )
        ),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion
        if ordered[0].get("Modality") == "CT"
        else codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    document = hd.sr.Comprehensive3DSR(
        evidence=ordered,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=params["series_number"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="TOMAAT",
        series_description=params["series_description"],
        is_complete=True,
    )
    document.save_as(out, enforce_file_format=True)
    return {"size": os.path.getsize(out)}


def warm(folder: str) -> None:
    """Build both on a tiny series, so rt-utils, OpenCV and highdicom's SR load before the decoder is confined."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths, uids = [], []
    for k in range(3):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 8, 8, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelSpacing, ds.ImageOrientationPatient = [1, 1], [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient, ds.SliceThickness = [0, 0, 2 * k], 2
        ds.PixelData = np.zeros((8, 8), "<i2").tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        path = os.path.join(folder, f"warm-{k}.dcm")
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue())
        paths.append(path)
        uids.append(str(ds.SOPInstanceUID))
    label = np.zeros((3, 8, 8), "<u2")
    label[1, 2:5, 3:6] = 1
    label.tofile(os.path.join(folder, "warm-label"))
    segment = {
        "value": 1,
        "name": "warm",
        "category": _DEFAULT_CATEGORY,
        "type": _DEFAULT_TYPE,
        "voxels": 9,
        "ml": 0.018,
    }
    params = {
        "series_number": 1,
        "series_description": "warm-up",
        "algorithm_name": "warm-up",
        "algorithm_version": "0",
    }
    message = {"instances": uids, "shape": [3, 8, 8], "segments": [segment], "params": params}
    rtstruct(paths, os.path.join(folder, "warm-label"), message, os.path.join(folder, "warm-out"))
    sr(paths, os.path.join(folder, "warm-label"), message, os.path.join(folder, "warm-out"))
