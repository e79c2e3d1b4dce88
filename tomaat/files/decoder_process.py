"""The decoder process: ITK, HDF5 and teem parse untrusted files here, and can open nothing else.

Started by confined.py as `python -m tomaat.files.decoder_process FOLDER MEMORY`. It loads every
reader it will use (by reading a small file of each kind), then confines itself with Landlock: no
file outside FOLDER can be opened, no TCP connection made or port bound, no abstract socket or
signal reaches another process. Its address space is capped too, so a file that makes a decoder
allocate without bound fails here, not in the server. A reader fooled by a file (an HDF5 external
link, a NRRD `data file`, a bug) then finds nothing to read.

Requests and answers are length-prefixed JSON on the pipes; voxel data and transform parameters
go back as a raw file in FOLDER, which the server maps. Nothing is pickled: the server must be able
to distrust every byte this process sends. What the readers print goes to stderr, never into the
answers.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import struct
import sys

import numpy as np
import SimpleITK as sitk

READ_WRITE_HERE = ("READ_FILE", "WRITE_FILE", "READ_DIR", "MAKE_REG", "REMOVE_FILE", "TRUNCATE")


def _send(out, message: dict) -> None:
    data = json.dumps(message).encode()
    out.write(struct.pack("<I", len(data)) + data)
    out.flush()


def _receive(source) -> dict | None:
    head = source.read(4)
    if len(head) < 4:
        return None
    return json.loads(source.read(struct.unpack("<I", head)[0]))


def _warm(folder: str) -> None:
    """Read one small file of each kind, so no reader loads a library or file once confined."""
    image = sitk.Image([3, 3, 3], sitk.sitkInt16)
    for suffix, io in ((".nii", "NiftiImageIO"), (".nii.gz", "NiftiImageIO"), (".nrrd", "NrrdImageIO")):
        path = os.path.join(folder, "warm" + suffix)
        sitk.WriteImage(image, path, suffix != ".nii")
        _image(path, io, os.path.join(folder, "warm.raw"))
    for suffix, transform in ((".h5", sitk.AffineTransform(3)), (".mat", sitk.AffineTransform(3))):
        path = os.path.join(folder, "warm" + suffix)
        sitk.WriteTransform(transform, path)
        _transform(path, os.path.join(folder, "warm.raw"))
    path = os.path.join(folder, "bspline.h5")
    sitk.WriteTransform(sitk.BSplineTransform(3, 3), path)
    _transform(path, os.path.join(folder, "warm.raw"))
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))


def _confine(folder: str) -> tuple[int, str]:
    """(Landlock ABI in force, or 0), and why not where it is not."""
    try:
        import landlockpy
    except ImportError:
        return 0, "the landlockpy package is not installed"
    abi = landlockpy.abi_version()
    if abi < 1:
        return 0, "this kernel offers no Landlock"
    access = landlockpy.AccessFS.NONE
    for name in READ_WRITE_HERE:
        access |= landlockpy.AccessFS[name]
    scoped = landlockpy.Scope.ABSTRACT_UNIX_SOCKET | landlockpy.Scope.SIGNAL
    with landlockpy.Ruleset(scoped=scoped) as ruleset:
        ruleset.allow_path(folder, access)
        ruleset.restrict()
    return abi, ""


def _limit_memory(extra: int) -> None:
    """Cap the address space at what the process has now plus `extra` bytes."""
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, size + extra))


def _image(path: str, io: str, out: str) -> dict:
    reader = sitk.ImageFileReader()
    reader.SetImageIO(io)
    reader.SetFileName(path)
    image = reader.Execute()
    array = sitk.GetArrayViewFromImage(image)
    array.tofile(out)
    return {
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "vector": image.GetNumberOfComponentsPerPixel() > 1,
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }


def _transform(path: str, out: str) -> dict:
    transform = sitk.ReadTransform(path).Downcast()
    parts = (
        [transform.GetNthTransform(i).Downcast() for i in range(transform.GetNumberOfTransforms())]
        if isinstance(transform, sitk.CompositeTransform)
        else [transform]
    )
    described, parameters = [], []
    for part in parts:
        values = part.GetParameters()
        described.append(
            {
                "name": part.GetName(),
                "dimension": part.GetDimension(),
                "fixed": list(part.GetFixedParameters()),
                "count": len(values),
            }
        )
        parameters.append(np.asarray(values, dtype="<f8"))
    np.concatenate(parameters or [np.zeros(0, "<f8")]).tofile(out)
    return {"transforms": described, "composite": isinstance(transform, sitk.CompositeTransform)}


def _probe(message: dict) -> dict:
    """Whether this process can open a path or reach a TCP port: confinement checked from inside."""
    answer = {}
    try:
        os.close(os.open(message["path"], os.O_RDONLY))
        answer["open"] = True
    except OSError:
        answer["open"] = False
    try:
        with socket.create_connection(("127.0.0.1", int(message["port"])), timeout=2):
            answer["connect"] = True
    except OSError:
        answer["connect"] = False
    return answer


def _handle(folder: str, message: dict) -> dict:
    if message.get("op") == "probe":
        return _probe(message)
    path, out = os.path.join(folder, message["file"]), os.path.join(folder, message["out"])
    if message.get("op") == "image":
        return _image(path, message["io"], out)
    return _transform(path, out)


def serve(folder: str, memory: int, warm, handle, refusal: type[Exception] | tuple = ()) -> None:
    """A decoder's life: warm up, cap memory, confine, then answer one message at a time until stdin closes.

    `handle(folder, message)` answers a message; a `refusal` it raises is told as such (its text for
    the user), any other failure only by its type: a file the decoder could not read.
    """
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a reader that prints must not corrupt the answers
    warm(folder)
    _limit_memory(memory)
    abi, reason = _confine(folder)
    _send(out, {"ready": True, "landlock": abi, "reason": reason})
    source = sys.stdin.buffer
    while True:
        message = _receive(source)
        if message is None:
            return
        try:
            answer = {"ok": True, **handle(folder, message)}
        except refusal as refused:
            answer = {"ok": False, "refused": str(refused)}
        except Exception as error:  # noqa: BLE001 - any reader failure is an unreadable file
            answer = {"ok": False, "error": type(error).__name__}
        _send(out, answer)


def main() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    serve(sys.argv[1], int(sys.argv[2]), _warm, _handle)


if __name__ == "__main__":
    main()
