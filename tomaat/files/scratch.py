"""Private folders for files we write ourselves: outputs for libraries that only write named files,
and the input files that upstream-style apps are handed as paths.

The folder and whatever was written into it are removed when the block ends,
on success and on every error, so no request leaves files behind. A process
killed outright cannot clean up, so each folder carries its owner's PID and
the next start removes the folders of owners that are gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile

log = logging.getLogger("tomaat.server")

PREFIX = "tomaat-"
_OWNED = re.compile(r"tomaat-(\d+)-")


@contextlib.contextmanager
def scratch_folder():
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-", ignore_cleanup_errors=True) as folder:
        yield folder


@contextlib.contextmanager
def scratch_path(suffix: str):
    with scratch_folder() as folder:
        yield os.path.join(folder, "data" + suffix)


def write_then_bytes(suffix: str, writer) -> bytes:
    """Let writer(path) create a file and return its bytes."""
    with scratch_path(suffix) as path:
        writer(path)
        with open(path, "rb") as handle:
            return handle.read()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or a name we should not guess about
    return True


def remove_orphans(folder: str | None = None) -> list[str]:
    """Remove scratch folders whose owning process no longer runs; the names removed.

    A PID reused by an unrelated process keeps its folder until that process ends too,
    which errs on the side of never deleting a live request's files.
    """
    folder = folder or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        owner = _OWNED.match(name)
        path = os.path.join(folder, name)
        if owner and int(owner.group(1)) != os.getpid() and not _alive(int(owner.group(1))) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    if removed:
        log.info("removed %d scratch folder(s) left by stopped processes in %s", len(removed), folder)
    return removed
