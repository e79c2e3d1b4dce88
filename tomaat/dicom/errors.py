"""The one error the DICOM side raises: files, a label or a decoder that cannot make a series or a SEG."""

from __future__ import annotations

from ..client.errors import InputFileError


class DicomError(InputFileError):
    """Files that are not one DICOM volume, a label not on its grid, or a decoder that failed on them.

    An InputFileError, so the command line ends with one line and exit status 2, as for any input
    that does not fit; str() is that line.
    """
