"""Untrusted files go to a small pool of confined decoder processes (decoder_process.py).

ITK chooses readers by content and follows what files say (HDF5 external links, a NRRD's
`data file`); its readers, HDF5's and teem's are large C++ and C code parsing hostile bytes.
So no untrusted byte reaches them in the server's process: the server writes the file into a
decoder's private folder, the decoder reads it with the reader we chose and writes the voxels
or transform parameters back beside it, and the server maps that file. A decoder that crashes,
hangs past its deadline or answers nonsense is killed and replaced; the request gets a clean
415, and the next request a fresh decoder.

The answers are distrusted: only JSON of the expected shape, a plain file (no link) of exactly
the announced size, and only transform classes named here are rebuilt.
"""

from __future__ import annotations

import atexit
import json
import logging
import mmap
import os
import select
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import SimpleITK as sitk

from .scratch import PREFIX

log = logging.getLogger("tomaat.files")

DEFAULT_MEMORY = 5 * 1024**3  # address space a decoder may add once loaded: a 4 GiB image and its reader
DEFAULT_TIMEOUT = 120.0
DEFAULT_MODULE = "tomaat.files.decoder_process"
START_TIMEOUT = 60.0
# Fixed at import: the decoders outlive any one request, and tests point tempfile elsewhere per test.
_BASE = tempfile.gettempdir()
_MAX_ANSWER = 1 << 20
_PASSED_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_DTYPES = {np.dtype(t).str for t in ("i1", "u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f4", "<f8", "<c8", "<c16")}
_TRANSFORMS = {
    "AffineTransform": lambda d: sitk.AffineTransform(d),
    "TranslationTransform": lambda d: sitk.TranslationTransform(d),
    "ScaleTransform": lambda d: sitk.ScaleTransform(d),
    "Euler2DTransform": lambda d: sitk.Euler2DTransform(),
    "Euler3DTransform": lambda d: sitk.Euler3DTransform(),
    "Similarity2DTransform": lambda d: sitk.Similarity2DTransform(),
    "Similarity3DTransform": lambda d: sitk.Similarity3DTransform(),
    "VersorRigid3DTransform": lambda d: sitk.VersorRigid3DTransform(),
    "VersorTransform": lambda d: sitk.VersorTransform(),
    "BSplineTransform": lambda d: sitk.BSplineTransform(d, 3),
    "DisplacementFieldTransform": lambda d: sitk.DisplacementFieldTransform(d),
}


class DecodeFailed(Exception):
    """The decoder could not read the file; `reason` says how, for the caller's message."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Decoder:
    """One decoder process and its private folder."""

    def __init__(self, memory: int, module: str = DEFAULT_MODULE):
        self.folder = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-decoder-", dir=_BASE)
        # Only what Python needs: a decoder taken over by a file could copy its environment into
        # the voxels it returns, so secrets passed to the server by environment must not be there.
        env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
        env.update(dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1"))
        env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, self.folder, str(memory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            env=env,
            cwd=self.folder,
        )
        assert self.process.stdin is not None and self.process.stdout is not None  # both were asked for as pipes
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.busy = False
        self.slots: threading.BoundedSemaphore | None = None  # set by DecoderPool.run while handed out
        try:
            self.ready = self._receive(time.monotonic() + START_TIMEOUT)
        except DecodeFailed:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self, count: int, deadline: float) -> bytes:
        data, fd = b"", self.stdout.fileno()
        while len(data) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise DecodeFailed("timeout")
            piece = os.read(fd, count - len(data))
            if not piece:
                raise DecodeFailed("stopped")
            data += piece
        return data

    def _receive(self, deadline: float) -> dict:
        size = struct.unpack("<I", self._read(4, deadline))[0]
        if size > _MAX_ANSWER:
            raise DecodeFailed("nonsense")
        try:
            answer = json.loads(self._read(size, deadline))
        except ValueError:
            raise DecodeFailed("nonsense") from None
        if not isinstance(answer, dict):
            raise DecodeFailed("nonsense")
        return answer

    def ask(self, message: dict, timeout: float) -> dict:
        data = json.dumps(message).encode()
        self.busy = True
        try:
            self.stdin.write(struct.pack("<I", len(data)) + data)
            self.stdin.flush()
        except OSError:
            raise DecodeFailed("stopped") from None
        answer = self._receive(time.monotonic() + timeout)
        self.busy = False
        return answer

    def clear(self) -> None:
        for name in os.listdir(self.folder):
            os.unlink(os.path.join(self.folder, name))

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        for pipe in (self.stdin, self.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


class DecoderPool:
    """At most `size` decoder processes, started on first use and reused one request at a time.

    `module` is the decoder program (`python -m module FOLDER MEMORY`, decoder_process.py's protocol):
    each kind of file gets a decoder that loaded, before confining itself, only the readers it needs.
    """

    def __init__(
        self,
        size: int = 2,
        memory: int = DEFAULT_MEMORY,
        timeout: float = DEFAULT_TIMEOUT,
        module: str = DEFAULT_MODULE,
    ):
        self.module = module
        self.configure(size, memory, timeout)
        self._idle: list[_Decoder] = []
        self._all: set[_Decoder] = set()
        self._lock = threading.Lock()
        self._warned = False

    def configure(self, size: int, memory: int, timeout: float) -> None:
        """Take effect for decoders started from now on (the server calls this once at start)."""
        self.size, self.memory, self.timeout = max(1, int(size)), int(memory), float(timeout)
        self._slots = threading.BoundedSemaphore(self.size)

    @property
    def decoders(self) -> list[_Decoder]:
        with self._lock:
            return list(self._all)

    def _start(self) -> _Decoder:
        decoder = _Decoder(self.memory, self.module)
        if not decoder.ready.get("landlock") and not self._warned:
            self._warned = True
            log.warning(
                "untrusted files are decoded WITHOUT confinement (%s); they still go to separate, "
                "memory-limited processes, with the reader chosen by the server",
                str(decoder.ready.get("reason", "unknown reason"))[:200],
            )
        with self._lock:
            self._all.add(decoder)
        return decoder

    def warm(self, count: int | None = None) -> int:
        """Start decoders before any file needs one, at once, so that no request waits the ~0.4 s a decoder takes
        to load its readers and confine itself (the server does this before its port opens). Returns how many
        are ready; one that fails to start is left to start on demand, where its failure is a request's."""
        wanted = min(self.size, self.size if count is None else max(0, int(count)))
        with self._lock:
            missing = wanted - len(self._all)
        started: list[_Decoder] = []

        def start() -> None:
            try:
                started.append(self._start())
            except DecodeFailed as failure:
                log.warning("a decoder process could not be started ahead (%s); one starts on demand", failure.reason)

        threads = [threading.Thread(target=start, name="tomaat-decoder-start") for _ in range(max(0, missing))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with self._lock:
            self._idle.extend(started)
            return len(self._all)

    def _discard(self, decoder: _Decoder) -> None:
        with self._lock:
            self._all.discard(decoder)
        decoder.close()

    def run(
        self, message: dict, data: bytes | None = None, suffix: str = "", files: dict[str, bytes] | None = None
    ) -> tuple[dict, _Decoder]:
        """Send one file (written as `input<suffix>`) or several, and message; the answer, and the decoder to release.

        `files` are written under names chosen here (`input-0`, `input-1`, ...), never the keys, and the
        decoder is told which key each name holds (message["files"], in the order given).
        """
        named = {key: f"input-{index}" for index, key in enumerate(files or {})}
        slots = self._slots
        slots.acquire()
        try:
            decoder = self._ready(data, suffix, {named[key]: content for key, content in (files or {}).items()})
            request = {**message, "file": "input" + suffix, "out": "output.raw"}
            if files is not None:
                request["files"] = named
            try:
                answer = decoder.ask(request, self.timeout)
            except DecodeFailed as failure:
                what = f"{len(named)}-file request" if files is not None else f"{suffix or 'probe'} file"
                log.warning("a decoder process %s on a %s; replaced", failure.reason, what)
                self._discard(decoder)
                raise
        except BaseException:
            slots.release()
            raise
        decoder.slots = slots  # released into the semaphore it came from, even if configure() replaced it since
        return answer, decoder

    def _ready(self, data: bytes | None, suffix: str, files: dict[str, bytes]) -> _Decoder:
        """An idle decoder, or a new one, with the inputs written into its folder."""
        with self._lock:
            decoder = self._idle.pop() if self._idle else None
        for _attempt in range(2):
            if decoder is None or decoder.process.poll() is not None:
                if decoder is not None:
                    self._discard(decoder)  # it died while idle: the file never reached it
                decoder = self._start()
            try:
                inputs = {"input" + suffix: data} if data is not None else {}
                for name, content in {**inputs, **files}.items():
                    with open(os.path.join(decoder.folder, name), "wb") as handle:
                        handle.write(content)
                return decoder
            except OSError:
                self._discard(decoder)  # its folder was removed under it
                decoder = None
        raise DecodeFailed("stopped")

    def release(self, decoder: _Decoder) -> None:
        try:
            decoder.clear()
        except OSError:
            self._discard(decoder)
        else:
            with self._lock:
                self._idle.append(decoder)
        assert decoder.slots is not None  # run() handed the decoder out with the semaphore it holds
        decoder.slots.release()

    def close(self) -> None:
        with self._lock:
            decoders, self._all, self._idle = list(self._all), set(), []
        for decoder in decoders:
            decoder.close()


def _output(decoder: _Decoder, size: int) -> mmap.mmap | None:
    """The decoder's output file, refused unless it is a plain file of exactly `size` bytes; None when it is
    empty, since mmap cannot map zero bytes."""
    path = os.path.join(decoder.folder, "output.raw")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise DecodeFailed("nonsense") from None
    try:
        status = os.fstat(fd)
        if not (stat.S_ISREG(status.st_mode) and status.st_nlink == 1 and status.st_size == size):
            raise DecodeFailed("nonsense")
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
    finally:
        os.close(fd)


def _numbers(answer: dict, key: str, count: int) -> list[float]:
    values = answer.get(key)
    if not isinstance(values, list) or len(values) != count or not all(isinstance(v, (int, float)) for v in values):
        raise DecodeFailed("nonsense")
    return [float(v) for v in values]


POOL = DecoderPool()
atexit.register(POOL.close)  # their folders go with them; a killed server's are swept by the next start


def landlock_available() -> bool:
    """Whether decoders here can be confined: the package is installed and the kernel offers Landlock."""
    try:
        import landlockpy
    except ImportError:
        return False
    return landlockpy.abi_version() >= 1


def read_image(data: bytes, suffix: str, io: str, expected_bytes: int, pool: DecoderPool | None = None) -> sitk.Image:
    """The image in `data`, read by ITK's `io` reader in a decoder; DecodeFailed when it cannot be."""
    pool = pool or POOL
    answer, decoder = pool.run({"op": "image", "io": io}, data, suffix)
    try:
        if not answer.get("ok"):
            raise DecodeFailed("refused")
        dtype, shape = answer.get("dtype"), answer.get("shape")
        if dtype not in _DTYPES or not isinstance(shape, list) or not all(isinstance(n, int) and n > 0 for n in shape):
            raise DecodeFailed("nonsense")
        vector = bool(answer.get("vector"))
        dims = len(shape) - vector
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not 2 <= dims <= 5 or size != expected_bytes:
            raise DecodeFailed("nonsense")
        mapped = _output(decoder, size)
        assert mapped is not None  # size > 0: every dimension was checked positive
        try:
            image = sitk.GetImageFromArray(np.frombuffer(mapped, dtype=dtype).reshape(shape), isVector=vector)
        finally:
            mapped.close()
        image.SetSpacing(_numbers(answer, "spacing", dims))
        image.SetOrigin(_numbers(answer, "origin", dims))
        image.SetDirection(_numbers(answer, "direction", dims * dims))
        return image
    except (RuntimeError, ValueError):
        raise DecodeFailed("nonsense") from None
    finally:
        pool.release(decoder)


def read_transform(data: bytes, suffix: str, max_parameters: int, pool: DecoderPool | None = None) -> sitk.Transform:
    """The transform in `data`, read by ITK in a decoder and rebuilt here from its parameters."""
    pool = pool or POOL
    answer, decoder = pool.run({"op": "transform"}, data, suffix)
    try:
        parts = answer.get("transforms")
        if not answer.get("ok"):
            raise DecodeFailed("refused")
        if not isinstance(parts, list) or not parts or len(parts) > 64:
            raise DecodeFailed("nonsense")
        given = [part.get("count") if isinstance(part, dict) else None for part in parts]
        counts = [count for count in given if isinstance(count, int) and count >= 0]
        if len(counts) != len(given):
            raise DecodeFailed("nonsense")
        if sum(counts) > max_parameters:
            raise DecodeFailed("too many parameters")
        mapped = _output(decoder, 8 * sum(counts))
        values = np.frombuffer(mapped, dtype="<f8").copy() if mapped is not None else np.zeros(0)
        if mapped is not None:
            mapped.close()
        built, at = [], 0
        for part, count in zip(parts, counts, strict=True):
            make, dimension = _TRANSFORMS.get(part.get("name")), part.get("dimension")
            if make is None or dimension not in (2, 3) or not isinstance(part.get("fixed"), list):
                raise DecodeFailed("refused")
            transform = make(dimension)
            transform.SetFixedParameters(_numbers(part, "fixed", len(part["fixed"])))
            if transform.GetNumberOfParameters() != count:
                raise DecodeFailed("nonsense")
            transform.SetParameters(values[at : at + count].tolist())
            built.append(transform)
            at += count
        if len(built) == 1 and not answer.get("composite"):
            return built[0]
        return sitk.CompositeTransform(built)
    except (RuntimeError, ValueError, TypeError):
        raise DecodeFailed("nonsense") from None
    finally:
        pool.release(decoder)


def probe(path: str, port: int, pool: DecoderPool | None = None) -> dict:
    """Ask a decoder whether it can open `path` or connect to `port` on loopback (the confinement test)."""
    pool = pool or POOL
    answer, decoder = pool.run({"op": "probe", "path": path, "port": port})
    pool.release(decoder)
    return {**answer, "landlock": decoder.ready.get("landlock", 0)}
