"""DICOM for the PACS loop: a series read as a SimpleITK image, a label stored back as a DICOM SEG.

The files are parsed only in confined decoder processes (`decoder_process`, `slices`,
`segmentation`); this process reads bytes (`folder`), hands them over and checks what comes
back (`series`). The names load on first use, so `import tomaat.dicom` pulls in neither pydicom
nor highdicom, nor the decoders' pool.
"""

from ..lazy import exports

__all__ = [
    "DicomError",
    "DicomSeries",
    "Segment",
    "folder_paths",
    "read_folder",
    "read_series",
    "write_seg",
]

__getattr__, __dir__ = exports(
    __name__,
    globals(),
    {
        "DicomError": ".errors",
        "DicomSeries": ".series",
        "Segment": "..protocol.elements",
        "read_series": ".series",
        "write_seg": ".series",
        "folder_paths": ".folder",
        "read_folder": ".folder",
    },
)
