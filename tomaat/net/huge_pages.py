"""A serving process restarts itself once, before it loads anything, with huge pages for its large buffers.

Every 64 MiB buffer a request fills (the image ITK reads a volume into, the app's arrays, the answer) is
otherwise faulted in 16,384 pages of 4 KiB, which cost more than the copy that fills them: 52 ms to make a
256^3 float32 image from a request body, 30 ms with 2 MiB pages (docs/performance.md). The kernel gives
transparent huge pages only to memory advised so, and glibc advises its own buffers only when told at start
(its `glibc.malloc.hugetlb` tunable, read from GLIBC_TUNABLES), so the serving command runs itself again with
it set. Only standard-library modules are imported here: the restart happens before anything else is.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"


def restart_with_huge_pages() -> None:
    """Replace this process (same id, arguments and open files) with one whose allocator asks for huge pages;
    return where that is not needed, already so, or not possible. An operator's own setting of the tunable
    (`glibc.malloc.hugetlb=0` to turn it off) is kept, and so are their other tunables."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables or getattr(sys, "frozen", False) or not sys.orig_argv or sys.argv[0] in ("-", ""):
        return  # a script read from standard input (or typed) could not be read again
    if platform.libc_ver()[0] != "glibc" or "[never]" in _kernel_setting():
        return
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{TUNABLE}=1")))}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:
        return


def _kernel_setting() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as setting:
            return setting.read()
    except OSError:
        return "[never]"
