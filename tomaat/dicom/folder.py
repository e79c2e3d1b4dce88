"""The files of a folder as bytes, for read_series: this process reads a series' files, it never parses them."""

from __future__ import annotations

import os
import stat

from .errors import DicomError


def folder_paths(path: str | os.PathLike) -> list[str]:
    """The regular files under `path`, relative to it and sorted: what read_folder reads, in its order.

    DICOMDIR is an index of a medium, not an instance, and hidden files (a desktop's .DS_Store,
    ._ forks) are not a PACS's; symbolic links are not followed, so a series is what the folder holds.
    """
    root = os.fspath(path)
    if not os.path.isdir(root):
        raise DicomError(f"{root}: not a folder; expected a folder of DICOM files")
    found = []
    for folder, subfolders, names in os.walk(root, onerror=_refuse):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in names:
            full = os.path.join(folder, name)
            if name.startswith(".") or name.upper() == "DICOMDIR" or not stat.S_ISREG(os.lstat(full).st_mode):
                continue
            found.append(os.path.relpath(full, root))
    return sorted(found)


def read_folder(path: str | os.PathLike) -> list[bytes]:
    """The bytes of each file folder_paths(path) names, in that order."""
    root = os.fspath(path)
    files = []
    for name in folder_paths(root):
        try:
            with open(os.path.join(root, name), "rb") as handle:
                files.append(handle.read())
        except OSError as error:
            raise DicomError(f"{os.path.join(root, name)}: cannot be read ({error.strerror})") from None
    return files


def _refuse(error: OSError) -> None:
    raise DicomError(f"{error.filename}: cannot be listed ({error.strerror})")
