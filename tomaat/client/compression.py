"""Compressed uploads: lossless, fast, and only where they pay.

On DSL and 4G the bytes on the wire are the whole cost of a prediction; on
loopback and a LAN they are nearly free and compressing would only add time.
So a volume is compressed automatically when all of these hold:

- the server is far: its first answers took NEAR (15 ms) or more. The client times
  GET /info, a new connection and a request, two round trips; when that took 15 ms
  or more it times one more exchange (GET /health) and takes the quicker. Loopback
  and a LAN answer in 1-5 ms; DSL (20 ms round trips) and 4G (50 ms) in 40-100 ms.
  The address is not what counts: a slow link may end in a local proxy or tunnel,
  and a LAN server has an address like any other;
- the volume holds at least MIN_BYTES (256 KiB) of uncompressed data;
- a sample of it (16 slices of 32 KiB spread over the data) deflates to at most
  MAX_RATIO (0.9) of its size: past that, the few percent saved are not worth the time.

`compress=True` / `False` (`--compress` / `--no-compress`) force the choice. A file
that is already compressed (.nii.gz, MHA with `CompressedData = True`, gzip NRRD) is
always sent as it is. Each format is compressed in its own way, keeping the file's own
header, and the server reads it with its bomb limits: MHA as `CompressedData = True`
(zlib), NIfTI as .nii.gz, NRRD as `encoding: gzip`. Volumes the client encodes itself
(SimpleITK images, DICOM series, other formats) become compressed MHA, the format the
server reads fastest. All of it is ISA-L (python-isal) at LEVEL, in the reactor's thread pool.

`python -m tomaat.client.compression` measures the choices on CT-like volumes
(docs/performance.md, "Compressed uploads").
"""

from __future__ import annotations

import re
from functools import partial

from isal import igzip, isal_zlib

from ..files.image_headers import nrrd_field, nrrd_lines

LEVEL = 1  # ISA-L: level 1 is as fast as 0 and 15% smaller; 2 and 3 gain 1-2% more for 10-60% more time
NEAR = 0.015  # seconds: a server whose quickest exchange (connect and request) took less is on this machine or LAN
MIN_BYTES = 256 * 1024
MAX_RATIO = 0.9
SAMPLES = 16
SAMPLE_BYTES = 32 * 1024


def sample_ratio(data) -> float:
    """How well data deflates, estimated from SAMPLES slices spread over it (about 1 ms).

    data is bytes-like, or a file sent from disk (inputs.FileData), whose slices are read.
    """
    if hasattr(data, "sample"):
        read = data.sample
    else:
        view = memoryview(data).cast("B")

        def read(at: int, size: int):
            return view[at : at + size]

    length = len(data)
    if length <= SAMPLES * SAMPLE_BYTES:
        pieces = [read(0, length)]
    else:
        step = (length - SAMPLE_BYTES) // (SAMPLES - 1)
        pieces = [read(step * index, SAMPLE_BYTES) for index in range(SAMPLES)]
    raw = sum(len(piece) for piece in pieces)
    packed = sum(len(isal_zlib.compress(piece, LEVEL)) for piece in pieces)
    return packed / raw if raw else 1.0


def pays(data, far: bool, forced: bool | None) -> bool:
    """The rule above: whether to compress data (a volume's uncompressed bytes) for a far or near server."""
    if forced is not None:
        return forced
    if not far or len(data) < MIN_BYTES:
        return False
    return sample_ratio(data) <= MAX_RATIO


def deflate(data) -> bytes:
    """A zlib stream, as MHA's CompressedData holds it."""
    return isal_zlib.compress(data, LEVEL)


def gzip(data) -> bytes:
    """One gzip member, as .nii.gz files and NRRD's gzip encoding hold it."""
    return igzip.compress(data, LEVEL)


_MHA_KEY = re.compile(rb"[ \t]*([^\r\n=:]*?)[ \t]*[=:]")


def mha_header(header: bytes, packed: int) -> bytes:
    """An uncompressed MHA file's header lines, saying instead that its data is `packed` bytes of zlib.

    Every other line is kept as the file had it; the two compression keys go just before
    ElementDataFile, which stays the last line.
    """
    lines = []
    for line in header.splitlines():
        key = _MHA_KEY.match(line)
        name = key.group(1) if key else b""
        if name in (b"CompressedData", b"CompressedDataSize"):
            continue
        if name == b"ElementDataFile":
            lines += [b"CompressedData = True", b"CompressedDataSize = %d" % packed]
        lines.append(line)
    return b"\n".join(lines) + b"\n"


def nrrd_header(header: bytes) -> bytes:
    """A raw NRRD file's header (up to and with its blank line), saying instead that its data is gzip.

    Lines are split and fields named as teem does (image_headers.nrrd_lines / nrrd_field): a bare CR
    ends a line too, and only the line teem takes for the encoding field is rewritten."""
    parts, done = [], 0
    for start, text_end, _end in nrrd_lines(header):
        if start and nrrd_field(header[start:text_end])[0] == "encoding":
            parts += [header[done:start], b"encoding: gzip"]
            done = text_end
    return b"".join([*parts, header[done:]])


# ---- the measurements behind the choices (docs/performance.md) -----------------------------------------


def ct_phantom(shape: tuple[int, int, int], seed: int = 7):
    """A CT-like int16 volume (z, y, x): air exactly -1000 around an elliptic body of soft tissue with
    organs, lungs and a spine, and noise (sd 20 HU) everywhere inside the body."""
    import numpy as np

    nz, ny, nx = shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    cz, cy, cx = (nz - 1) / 2, (ny - 1) / 2, (nx - 1) / 2

    def ellipsoid(dx, dy, rx, ry, rz=None):
        inside = ((x - cx - dx * nx) / (rx * nx)) ** 2 + ((y - cy - dy * ny) / (ry * ny)) ** 2
        if rz is not None:
            inside = inside + ((z - cz) / (rz * nz)) ** 2
        return inside < 1

    rng = np.random.default_rng(seed)
    values = rng.normal(40, 20, shape).astype(np.float32)
    values[np.broadcast_to(ellipsoid(0.12, 0.02, 0.12, 0.14, 0.3), shape)] += 20  # liver
    values[np.broadcast_to(ellipsoid(-0.15, 0.05, 0.06, 0.05, 0.25), shape)] += 150  # contrast in a vessel
    values[np.broadcast_to(ellipsoid(-0.18, -0.04, 0.1, 0.16, 0.4), shape)] -= 860  # lung
    values[np.broadcast_to(ellipsoid(0.0, 0.26, 0.05, 0.05), shape)] += 700  # spine
    body = np.broadcast_to(ellipsoid(0.0, 0.0, 0.42, 0.34), shape)
    return np.where(body, values, -1000).astype(np.int16)


def _median_ms(work, runs: int) -> float:
    import statistics
    import time

    times = []
    for _ in range(runs):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def measure(shapes=((256, 256, 256), (64, 256, 256)), runs: int = 5) -> None:
    """Size and time of each candidate, what the server then spends reading it, and its time on a 10 Mbit/s link."""
    for shape in shapes:
        _measure_shape(shape, runs)
    noisy = noisy_ball(256)
    print(
        f"256^3 float32 noisy ball (benchmarks/latency.py's volume): sampled ratio {sample_ratio(noisy):.3f} "
        f"in {_median_ms(partial(sample_ratio, noisy), runs):.1f} ms, whole {len(deflate(noisy)) / len(noisy):.3f} "
        f"in {_median_ms(partial(deflate, noisy), runs):.0f} ms"
    )


def _measure_shape(shape: tuple[int, int, int], runs: int) -> None:
    import SimpleITK as sitk

    from ..files import mha
    from ..files.scratch import write_then_bytes
    from ..protocol.volumes import read_image

    array = ct_phantom(shape)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.7, 1.25))
    raw = array.tobytes()
    print(
        f"{shape[2]}x{shape[1]}x{shape[0]} int16 CT-like ({len(raw) / 2**20:.0f} MiB, {(array == -1000).mean():.0%} air)"
    )
    ratio_ms = _median_ms(partial(sample_ratio, raw), runs)
    print(f"  sampled ratio {sample_ratio(raw):.3f} in {ratio_ms:.1f} ms (compressed when at most {MAX_RATIO})")
    print(f"  {'candidate':<38}{'MiB':>7}{'ratio':>7}{'client ms':>10}{'server ms':>10}{'10 Mbit/s':>10}")

    def as_mha(source: sitk.Image, compress: bool, level: int) -> bytes:
        made = mha.write(source, compress, level)
        assert made is not None  # a scalar 3-D image: mha.write never leaves it to SimpleITK
        return made

    rows: list[tuple[str, bytes, float]] = [("MHA, uncompressed", as_mha(image, False, 0), 0.0)]
    for level in range(4):
        made = as_mha(image, True, level)
        rows.append((f"MHA, ISA-L zlib level {level}", made, _median_ms(partial(isal_zlib.compress, raw, level), runs)))
    nii = write_then_bytes(".nii", lambda path: sitk.WriteImage(image, path, False))
    rows.append(("NIfTI .nii, uncompressed", nii, 0.0))
    for level in (0, 1):
        made = igzip.compress(nii, level)
        rows.append(
            (f"NIfTI .nii.gz, ISA-L gzip level {level}", made, _median_ms(partial(igzip.compress, nii, level), runs))
        )

    def itk_gzip():
        return write_then_bytes(".nii.gz", lambda path: sitk.WriteImage(image, path, True, 1))

    rows.append(("NIfTI .nii.gz, ITK's zlib level 1", itk_gzip(), _median_ms(itk_gzip, runs)))

    def converted():
        return as_mha(read_image(nii), True, LEVEL)

    rows.append((f"NIfTI .nii read, then MHA level {LEVEL}", converted(), _median_ms(converted, runs)))
    for name, data, client in rows:
        server = _median_ms(partial(read_image, data), runs)
        wire = 8 * len(data) / 10e6
        print(
            f"  {name:<38}{len(data) / 2**20:>7.2f}{len(data) / len(raw):>7.3f}{client:>10.1f}{server:>10.1f}"
            f"{wire:>9.1f}s"
        )


def noisy_ball(size: int) -> bytes:
    """benchmarks/latency.py's volume: a float32 ball whose noise makes it as incompressible as a scan."""
    import numpy as np

    z, y, x = np.ogrid[:size, :size, :size]
    centre = (size - 1) / 2
    radius = np.sqrt((z - centre) ** 2 + (y - centre) ** 2 + (x - centre) ** 2, dtype=np.float32)
    noise = np.random.default_rng(5).normal(0, 20, (size, size, size)).astype(np.float32)
    return (1000 * (1 - radius / size) + noise).astype(np.float32).tobytes()


if __name__ == "__main__":
    measure()
