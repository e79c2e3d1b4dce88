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

import gzip
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


# NIfTI-2 fields (offset in the 540-byte header, format) and where the same field sits in NIfTI-1's 348 bytes.
_NIFTI2_TO_1 = (
    (524, "c", 39, "c"),  # dim_info
    (16, "8q", 40, "8h"),  # dim
    (80, "3d", 56, "3f"),  # intent_p1..p3
    (504, "i", 68, "h"),  # intent_code
    (12, "2h", 70, "2h"),  # datatype, bitpix
    (224, "q", 74, "h"),  # slice_start
    (104, "8d", 76, "8f"),  # pixdim
    (176, "2d", 112, "2f"),  # scl_slope, scl_inter
    (232, "q", 120, "h"),  # slice_end
    (496, "i", 122, "b"),  # slice_code
    (500, "i", 123, "B"),  # xyzt_units
    (192, "4d", 124, "4f"),  # cal_max, cal_min, slice_duration, toffset
    (240, "104s", 148, "104s"),  # descrip, aux_file
    (344, "2i", 252, "2h"),  # qform_code, sform_code
    (352, "18d", 256, "18f"),  # quatern_b..d, qoffset_x..z, srow_x, srow_y, srow_z
    (508, "16s", 328, "16s"),  # intent_name
)


def _nifti1(path: str) -> str:
    """A NIfTI-2 file rewritten as the NIfTI-1 file ITK reads (ITK 5's NiftiImageIO knows only NIfTI-1 and
    calls a NIfTI-2 header 'bad datatype'); other files as they are. Each field keeps its value, in the
    file's byte order; extensions are dropped (metadata). The header's doubles become NIfTI-1's floats,
    as ITK keeps a NIfTI-1 geometry; a size past NIfTI-1's 32767 is refused by struct."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        head = handle.read(540)
        order = next((o for o in "<>" if len(head) == 540 and struct.unpack(o + "i", head[:4])[0] == 540), None)
        if order is None or head[4:8] != b"n+2\x00":
            return path
        offset = struct.unpack(order + "q", head[168:176])[0]
        handle.read(max(offset, 544) - 540)
        header = bytearray(352)
        struct.pack_into(order + "i", header, 0, 348)
        for old, old_format, new, new_format in _NIFTI2_TO_1:
            struct.pack_into(order + new_format, header, new, *struct.unpack_from(order + old_format, head, old))
        struct.pack_into(order + "f", header, 108, 352.0)
        header[344:348] = b"n+1\x00"
        rewritten = path.removesuffix(".gz").removesuffix(".nii") + "-nifti1.nii"
        with open(rewritten, "wb") as target:
            target.write(header)
            while piece := handle.read(1 << 24):
                target.write(piece)
    return rewritten


def _image(path: str, io: str, out: str) -> dict:
    if io == "NiftiImageIO":
        path = _nifti1(path)
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


def probe(message: dict) -> dict:
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
        return probe(message)
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
