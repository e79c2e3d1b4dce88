"""Refuse model files that another user of the machine could have swapped: loading a model runs its code.

A TorchScript file carries code, a `.pth` checkpoint is a pickle and a bundle's
config instantiates classes by name, so whoever can write the model (or rename
a folder above it) chooses what the server executes. A file or folder writable
by others is refused, and so is any folder above it writable by others without
the sticky bit (with it, as in /tmp, others cannot rename or delete what they do
not own). Only the permission bits are read: they say the same for root, which
the kernel lets write anywhere anyway.
"""

from __future__ import annotations

import os
import stat

_WALK_LIMIT = 10_000  # a model folder holds a few files; a home folder passed by mistake is not walked for ever


def refuse_untrusted(path) -> None:
    """Raise ValueError (one line, naming the path and why) if `path` sits where other users can change it.

    A folder is checked with everything below it, since the loader reads files from it later. Links
    are followed: both the path as given and where it leads must be safe (a link is as weak as its folder).
    """
    given = os.path.abspath(os.fspath(path))
    try:
        real = os.path.realpath(given, strict=True)
    except OSError as error:
        raise ValueError(f"cannot read the model at {given}: {error.strerror or error}") from None
    _check_place(given, given)
    if real != given:
        _check_place(given, real)
    if os.path.isdir(real):
        _check_contents(given, real)


def _refuse(given: str, culprit: str, why: str) -> ValueError:
    return ValueError(
        f"refusing to load the model at {given}: {culprit} is writable by other users{why}; "
        f"keep models where only their owner can write (chmod o-w {culprit})"
    )


def _check_place(given: str, place: str) -> None:
    """The file or folder itself, then every folder above it up to /."""
    mode = os.lstat(place).st_mode
    if mode & stat.S_IWOTH and not stat.S_ISLNK(mode):  # a link's own bits mean nothing; its target is checked
        raise _refuse(given, place, "")
    folder = os.path.dirname(place)
    while True:
        mode = os.lstat(folder).st_mode
        # a link (/bin -> usr/bin) has mode 0o777 that means nothing: its own folder is checked next,
        # and where it leads is checked as the real path
        if not stat.S_ISLNK(mode) and mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            raise _refuse(given, folder, " without the sticky bit")
        if folder == os.path.dirname(folder):
            return
        folder = os.path.dirname(folder)


def _check_contents(given: str, top: str) -> None:
    seen, walked = 0, {top}
    for root, dirs, files in os.walk(top, followlinks=True):
        for name in dirs + files:
            seen += 1
            if seen > _WALK_LIMIT:
                raise ValueError(
                    f"refusing to load the model at {given}: more than {_WALK_LIMIT} entries below it; "
                    "expected a model folder"
                )
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                target = os.path.realpath(path)
                if not os.path.exists(target):
                    continue  # a dangling link loads nothing
                _check_place(given, target)
            elif mode & stat.S_IWOTH:
                raise _refuse(given, path, "")
        real_dirs = [os.path.realpath(os.path.join(root, name)) for name in dirs]
        dirs[:] = [name for name, real in zip(dirs, real_dirs, strict=True) if real not in walked]  # no link cycles
        walked.update(real_dirs)
