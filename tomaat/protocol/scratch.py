"""A private file path for libraries that only read and write named files (SimpleITK).

The folder and whatever was written into it are removed when the block ends,
on success and on every error, so no request leaves files behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def scratch_path(suffix: str):
    with tempfile.TemporaryDirectory(prefix="tomaat-") as folder:
        yield os.path.join(folder, "data" + suffix)


def write_then_read(suffix: str, data: bytes, reader):
    """Run reader(path) on a file holding data."""
    with scratch_path(suffix) as path:
        with open(path, "wb") as handle:
            handle.write(data)
        return reader(path)


def write_then_bytes(suffix: str, writer) -> bytes:
    """Let writer(path) create a file and return its bytes."""
    with scratch_path(suffix) as path:
        writer(path)
        with open(path, "rb") as handle:
            return handle.read()
