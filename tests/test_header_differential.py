"""Our header checks against the real readers, on generated header variants.

Each MHA or NRRD header hypothesis makes (line ends LF/CRLF/bare CR mixed, spacing around the
separator, key case, repeated and unknown keys, `data file`/`datafile`/`ElementDataFile` naming
LOCAL, a server file, the upload itself or a list) goes through image_headers.check and through
SimpleITK with MetaImageIO or NrrdImageIO named explicitly, in one child process that is confined
by Landlock where the kernel has it and runs under `strace -f -e trace=open,openat`, which sees the
C++ readers' own opens (an audit hook would see only Python's). Property: a header our check
accepts makes the reader open no file but the one it was given, and decode the size, pixel type,
voxels and grid our side decodes. strace comes from scripts/test-tools.sh.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tomaat.errors import RequestError
from tomaat.files import image_headers, mha

# CI runs scripts/test.sh, which installs strace: there a missing strace fails the tests instead of skipping them
pytestmark = pytest.mark.skipif(
    shutil.which("strace") is None and not os.environ.get("CI"), reason="strace is missing: run scripts/test-tools.sh"
)

CHILD = r"""
import json, os, sys
import SimpleITK as sitk
from tomaat.files import decoder_process
sitk.ProcessObject.SetGlobalWarningDisplay(False)
folder = sys.argv[1]
for suffix, io in ((".mha", "MetaImageIO"), (".nrrd", "NrrdImageIO")):  # load both readers before confining
    warm = os.path.join(folder, "warm" + suffix)
    sitk.WriteImage(sitk.Image([2, 2, 2], sitk.sitkInt16), warm)
    reader = sitk.ImageFileReader(); reader.SetImageIO(io); reader.SetFileName(warm); reader.Execute()
    os.unlink(warm)
print(json.dumps({"landlock": decoder_process._confine(folder)[0]}), flush=True)
for line in sys.stdin:
    path, io, mark = json.loads(line)
    reader = sitk.ImageFileReader(); reader.SetImageIO(io); reader.SetFileName(path)
    try:
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image)
        answer = {"size": list(image.GetSize()), "dtype": array.dtype.str, "voxels": array.ravel().tolist(),
                  "spacing": list(image.GetSpacing()), "origin": list(image.GetOrigin()),
                  "direction": list(image.GetDirection())}
    except Exception:
        answer = {"error": True}
    try:
        os.open(mark, os.O_RDONLY)
    except OSError:
        pass
    print(json.dumps(answer), flush=True)
"""
_OPEN = re.compile(r'open(?:at)?\((?:AT_FDCWD|\d+), "([^"]*)"|open\("([^"]*)"')


class Reader:
    """The confined child under strace: read(path) gives its decoding and every path it tried to open."""

    def __init__(self, folder: str):
        self.folder, self.log, self.count = folder, os.path.join(folder, "..", "strace.log"), 0
        self.process = subprocess.Popen(
            ["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", self.log, sys.executable, "-c", CHILD, folder],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=folder,
        )
        self.ready = json.loads(self.process.stdout.readline())
        self.seen = self._log_size()

    def _log_size(self) -> int:
        return os.path.getsize(self.log)

    def read(self, path: str, io: str) -> tuple[dict, list[str]]:
        self.count += 1
        mark = f"/nonexistent-tomaat-mark-{self.count}"
        self.process.stdin.write(json.dumps([path, io, mark]) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        deadline = time.monotonic() + 10
        while True:  # strace writes its line for the mark before the child answers; wait for it, bounded
            with open(self.log) as handle:
                handle.seek(self.seen)
                text = handle.read()
            if mark in text or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert mark in text, "strace never logged the mark"
        self.seen += len(text.encode())
        opened = [a or b for a, b in _OPEN.findall(text)]
        return answer, [os.path.normpath(os.path.join(self.folder, p)) for p in opened if p != mark]

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    base = tmp_path_factory.mktemp("differential")
    folder = base / "confined"
    folder.mkdir()
    (base / "secret.bin").write_bytes(np.arange(24, dtype="<i2").tobytes() * 4)
    child = Reader(str(folder))
    yield child
    child.close()


ENDS = st.sampled_from(["\n"] * 4 + ["\r\n"] * 3 + ["\r"])  # a bare CR now and then
SEPARATORS = st.sampled_from([" = ", "=", ": ", " := ", "\t=\t", " =  "])
TARGETS = ["LOCAL"] * 4 + ["Local", "input.mha", "../secret.bin", "LIST", "slice%d.raw"]


@st.composite
def mha_headers(draw):
    lines = [("ObjectType", "Image"), ("NDims", "3"), ("BinaryData", "True"), ("DimSize", "4 3 2")]
    lines += [("ElementType", "MET_SHORT")]
    extras = [
        ("ITK_InputFilterName", "MetaImageIO"),
        ("qform_code_name", "NIFTI_XFORM_SCANNER_ANAT"),
        ("DimSize", "2 2 2"),
        ("dimsize", "8 8 8"),
        ("Offset", "1.5 -2 3"),
        ("Origin", "4 5 6"),
        ("TransformMatrix", "0 1 0 -1 0 0 0 0 1"),
        ("Comment", "x\rDimSize = 2 2 2"),
        ("HeaderSize", draw(st.sampled_from(["0", "-1", "16"]))),
        ("CompressedData", "False"),
        ("ElementByteOrderMSB", draw(st.sampled_from(["False", "True"]))),
    ]
    for extra in draw(st.lists(st.sampled_from(extras), max_size=4)):
        lines.insert(draw(st.integers(0, len(lines))), extra)
    lines.append(("ElementDataFile", draw(st.sampled_from(TARGETS))))
    text = ""
    for key, value in lines:
        if draw(st.integers(0, 19)) == 0:
            key = key.lower()
        text += draw(st.sampled_from(["", " ", "\t"])) + key + draw(SEPARATORS) + value + draw(ENDS)
    return text.encode()


@st.composite
def nrrd_headers(draw):
    lines = ["type: short", "dimension: 3", "sizes: 4 3 2", "endian: little", "encoding: raw"]
    extras = [
        "# a comment",
        "content: x",
        "sizes: 8 8 8",
        "Sizes: 2 2 2",
        "space: left-posterior-superior",
        "tomaat:=a value",
        "data file:=not a field",
        "number: 24",
        "line skip: 1",
        "byte skip: 4",
        "space origin: (1,2,3)",
    ]
    for extra in draw(st.lists(st.sampled_from(extras), max_size=4)):
        lines.insert(draw(st.integers(0, len(lines))), extra)
    if draw(st.booleans()):
        name = draw(st.sampled_from(["data file", "datafile", "DATA FILE", "Data File", "data  file"]))
        target = draw(st.sampled_from(["input.nrrd", "../secret.bin", "LIST", "./input.nrrd"]))
        lines.insert(draw(st.integers(0, len(lines))), f"{name}: {target}")
    text = "NRRD0004" + draw(ENDS)
    for line in lines:
        text += line.replace(": ", draw(st.sampled_from([": ", ":  ", ": \t"])), 1) + draw(ENDS)
    return (text + draw(ENDS)).encode()


def _ours(raw: bytes, fmt: str):
    try:
        image_headers.check(raw, fmt, "volume")
    except RequestError:
        return None
    if fmt == "mha":
        return mha.read(raw)
    _, start = image_headers.nrrd_header(raw, "volume")
    return sitk.GetImageFromArray(np.frombuffer(raw[start:], "<i2").reshape(2, 3, 4))


def _differential(reader, header: bytes, fmt: str, io: str):
    raw = header + np.arange(24, dtype="<i2").tobytes()
    path = os.path.join(reader.folder, f"input.{fmt}")
    with open(path, "wb") as handle:
        handle.write(raw)
    ours = _ours(raw, fmt)
    if ours is None:
        return
    theirs, opened = reader.read(path, io)
    assert set(opened) <= {path}, f"accepted, yet the reader opened {opened}"
    if "error" in theirs:
        return  # the reader refuses what we let through (a field order teem wants): the decoder says 415
    array = sitk.GetArrayFromImage(ours)
    assert theirs["size"] == list(ours.GetSize()) and theirs["dtype"] == array.dtype.str
    assert theirs["voxels"] == array.ravel().tolist()
    if fmt == "mha":  # our own decoder: its grid too (a NRRD's grid is ITK's, in the decoder process)
        for key, mine in (("spacing", ours.GetSpacing()), ("origin", ours.GetOrigin())):
            assert np.allclose(theirs[key], mine)
        assert np.allclose(theirs["direction"], ours.GetDirection())


FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(FAST, max_examples=200)
@given(header=mha_headers())
def test_an_mha_header_we_accept_is_read_by_metaio_as_we_read_it(reader, header):
    _differential(reader, header, "mha", "MetaImageIO")


@FAST
@given(header=nrrd_headers())
def test_a_nrrd_header_we_accept_is_read_by_teem_as_we_read_it(reader, header):
    _differential(reader, header, "nrrd", "NrrdImageIO")


def test_the_reader_child_sees_and_reports_a_data_file_it_opens(reader):
    """The harness can fail: a detached header (which our check refuses) makes teem open the named file."""
    header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nendian: little\nencoding: raw\ndata file: ../secret.bin\n\n"
    path = os.path.join(reader.folder, "input.nrrd")
    with open(path, "wb") as handle:
        handle.write(header)
    _, opened = reader.read(path, "NrrdImageIO")
    assert os.path.normpath(os.path.join(reader.folder, "..", "secret.bin")) in opened
