"""A DICOM SEG from the source slices and a label volume, built by highdicom: run in the DICOM decoder only.

highdicom writes what the standard asks of a SEG (the frames' references to their source
instances, plane positions from the sources' own headers, the patient and study copied over), so
a viewer puts each frame on the slice it was computed from. It needs the sources' datasets, which
only the decoder may parse: so the SEG is built here and the server receives finished bytes.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from .slices import Refused, Stack

# Type 2 in the sources (present, possibly empty); highdicom reads them as attributes, so a source
# that leaves one out would stop the SEG, though an empty value is what the standard allows.
_PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


def build(volume: Stack, label: np.ndarray, segments: list[dict], params: dict) -> hd.seg.Segmentation:
    """The SEG of `label` (label values, in slice order); segments map label values to segment numbers 1..n."""
    lookup = np.zeros(1 << 16, np.uint16)
    for segment in segments:
        lookup[segment["value"]] = segment["number"]
    numbers = lookup[label].astype(np.uint8 if len(segments) < 256 else np.uint16)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=params["algorithm_name"],
        family=codes.cid7162.ArtificialIntelligence,
        version=params["algorithm_version"],
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=segment["number"],
            segment_label=segment["name"],
            segmented_property_category=hd.sr.CodedConcept(*segment["category"]),
            segmented_property_type=hd.sr.CodedConcept(*segment["type"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for segment in segments
    ]
    for dataset in volume.datasets:
        for key in _PATIENT_AND_STUDY:
            if key not in dataset:
                setattr(dataset, key, "")
        if not dataset.get("SliceThickness"):
            dataset.SliceThickness = round(volume.spacing[2], 6)
    texts = [params["series_description"], params["manufacturer_model_name"], params["algorithm_name"]]
    texts += [s["name"] for s in segments] + [part for s in segments for part in (*s["category"], *s["type"])]
    # A name in another script than the sources' character set can hold: UTF-8, which holds theirs too.
    extra: dict[str, Any] = {} if all(text.isascii() for text in texts) else {"specific_character_set": "ISO_IR 192"}
    try:
        return hd.seg.Segmentation(
            source_images=volume.datasets,
            pixel_array=numbers,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=params.get("series_uid") or hd.UID(),
            series_number=params["series_number"],
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=params["manufacturer"],
            manufacturer_model_name=params["manufacturer_model_name"],
            software_versions=tuple(params["software_versions"]),
            device_serial_number=params["device_serial_number"],
            series_description=params["series_description"],
            omit_empty_frames=True,  # a frame per slice and segment where the segment is; every frame names its slice
            **extra,
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise Refused(f"highdicom could not build the SEG from these sources: {str(error)[:300]}") from None
