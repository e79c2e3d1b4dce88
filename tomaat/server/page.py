"""The browser client's files (static/, shipped in the package) and the headers they are served with.

The page is served from the prediction server's own origin, so it needs no CORS and no second
certificate, and it loads nothing from anywhere else: hospital networks are often offline, and a strict
Content-Security-Policy (no inline script, no other origin) leaves an injected text nothing to run.
NiiVue needs no eval; dcm2niix is WebAssembly, hence 'wasm-unsafe-eval' (compiling wasm, not eval of
text); blob: and data: URLs are what the page and NiiVue make in memory.
"""

from __future__ import annotations

import functools
import os

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "app.css": ("app.css", "text/css; charset=utf-8"),
    "niivue.js": ("niivue.js", "text/javascript; charset=utf-8"),
    "LICENSES.txt": ("LICENSES.txt", "text/plain; charset=utf-8"),
    # dcm2niix's WebAssembly build: DICOM series to NIfTI in the browser, in a worker, loaded only when needed
    "dcm2niix/index.js": ("dcm2niix/index.js", "text/javascript; charset=utf-8"),
    "dcm2niix/worker.js": ("dcm2niix/worker.js", "text/javascript; charset=utf-8"),
    "dcm2niix/dcm2niix.js": ("dcm2niix/dcm2niix.js", "text/javascript; charset=utf-8"),
    "dcm2niix/dcm2niix.wasm": ("dcm2niix/dcm2niix.wasm", "application/wasm"),
}
POLICY = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self' blob: data:; worker-src 'self' blob:; font-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    b"Content-Security-Policy": POLICY.encode("ascii"),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-cache",
}


@functools.cache
def _read(filename: str) -> bytes:
    with open(os.path.join(FOLDER, filename), "rb") as handle:
        return handle.read()


def load() -> None:
    """Read every file once, at start, so no request reads the disk on the reactor thread."""
    for filename, _ in FILES.values():
        _read(filename)


def file(name: str) -> tuple[bytes, str] | None:
    """(content, content type) of a page file by its name under /app/, or None: only these names exist."""
    found = FILES.get(name)
    return None if found is None else (_read(found[0]), found[1])
