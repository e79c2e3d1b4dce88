"""HDF5 transform files that name other files are refused before ITK opens them; ITK's own files still parse.

The hostile files are built here with h5py from real SimpleITK files, next to "secret" files of known
content. The control tests show ITK itself follows each of them and hands the secret back as parameters.
"""

from __future__ import annotations

import base64
import shutil

import h5py
import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from clients import slicer_post
from conftest import make_affine, make_bspline, written_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tomaat import TomaatApp, Transform, TransformLinear
from tomaat.errors import RequestError
from tomaat.files import hdf5
from tomaat.protocol import transforms
from tomaat.protocol.outputs import decode_item

WHERE = "field 'moving' (transform)"
SECRET = np.arange(1.0, 13.0) * 111.0 + 0.5  # twelve values: as many as an affine transform's parameters
SECRET_TEXT = (
    b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nbin:x:2:2:bin:/bin:/x\n"
)
PARAMETERS = "TransformGroup/0/TransformParameters"


@pytest.fixture
def secrets(tmp_path):
    """Files the server must never open for a client: an ITK file holding SECRET, its raw bytes, and text."""
    folder = tmp_path / "secrets"
    folder.mkdir()
    secret = sitk.AffineTransform(3)
    secret.SetParameters(SECRET.tolist())
    sitk.WriteTransform(secret, str(folder / "secret.h5"))
    with h5py.File(folder / "secret.h5", "r+") as handle:
        handle["data"] = SECRET
    (folder / "secret.bin").write_bytes(SECRET.astype("<f8").tobytes())
    (folder / "secret.txt").write_bytes(SECRET_TEXT)
    return folder


def itk_file(path, transform) -> str:
    sitk.WriteTransform(transform, str(path))
    return str(path)


def composite(count: int) -> sitk.CompositeTransform:
    """From 8 components on, ITK's file keeps its TransformGroup's links in a fractal heap (dense storage)."""
    result = sitk.CompositeTransform(3)
    for i in range(count):
        result.AddTransform(sitk.TranslationTransform(3, (float(i), 0.5, -1.0)))
    return result


def old_format(source, path) -> str:
    """The same transform in HDF5's oldest format (superblock 0, symbol-table groups), as h5py writes it."""
    with h5py.File(source, "r") as original, h5py.File(path, "w", libver="earliest") as copy:
        original.copy("TransformGroup", copy)
    return str(path)


def _external_link(handle, folder):
    del handle[PARAMETERS]
    handle[PARAMETERS] = h5py.ExternalLink(str(folder / "secret.h5"), "/data")


def _relative_link(handle, folder):
    del handle[PARAMETERS]
    handle[PARAMETERS] = h5py.ExternalLink("secret.h5", "/data")  # found next to the file that names it


def _linked_group(handle, folder):
    del handle["TransformGroup/0"]
    handle["TransformGroup/0"] = h5py.ExternalLink(str(folder / "secret.h5"), "/TransformGroup/0")


def _dense_link(handle, folder):
    del handle["TransformGroup/3"]
    handle["TransformGroup/3"] = h5py.ExternalLink(str(folder / "secret.h5"), "/TransformGroup/0")


def _external_data(name):
    def edit(handle, folder):
        del handle[PARAMETERS]
        handle.create_dataset(PARAMETERS, shape=(12,), dtype="<f8", external=[(str(folder / name), 0, 96)])

    return edit


def _virtual(handle, folder):
    layout = h5py.VirtualLayout(shape=(12,), dtype="<f8")
    layout[:] = h5py.VirtualSource(str(folder / "secret.h5"), "data", shape=(12,))
    del handle[PARAMETERS]
    handle.create_virtual_dataset(PARAMETERS, layout, fillvalue=-1.0)


# name: (what the file starts as, how it is edited, the reason the server gives)
HOSTILE = {
    "external link": ("affine", _external_link, "an external link"),
    "relative external link": ("affine", _relative_link, "an external link"),
    "external link to a transform group": ("affine", _linked_group, "an external link"),
    "external link in dense link storage": ("composite", _dense_link, "an external link"),
    "external link, oldest format": ("old affine", _external_link, "an external link"),
    "external raw data": ("affine", _external_data("secret.bin"), "external raw data files"),
    "external raw data from a text file": ("affine", _external_data("secret.txt"), "external raw data files"),
    "virtual dataset": ("affine", _virtual, "a virtual dataset"),
}


def hostile(folder, case) -> str:
    """The crafted file, beside the secrets so that relative names resolve when ITK reads it directly."""
    start, edit, _ = HOSTILE[case]
    path = folder / (case.replace(" ", "-").replace(",", "") + ".h5")
    if start == "composite":
        itk_file(path, composite(10))
    elif start == "old affine":
        old_format(itk_file(folder / "plain.h5", make_affine()), path)
    else:
        itk_file(path, make_affine())
    with h5py.File(path, "r+") as handle:
        edit(handle, folder)
    return str(path)


def field(kind: str, data: bytes) -> bytes:
    return kind.encode() + b"\n" + base64.encodebytes(data)


def read_bytes(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def leaked(transform: sitk.Transform) -> bytes:
    """The parameter bytes of the transform, or of a composite's one component that is not a translation."""
    if transform.GetName() == "CompositeTransform":
        composite_ = sitk.CompositeTransform(transform)
        parts = [composite_.GetNthTransform(i) for i in range(composite_.GetNumberOfTransforms())]
        transform = next(part for part in parts if part.GetName() != "TranslationTransform")
    return np.asarray(transform.GetParameters(), dtype="<f8").tobytes()


@pytest.fixture
def no_read(monkeypatch):
    calls = []
    monkeypatch.setattr(sitk, "ReadTransform", lambda *args: calls.append(args))
    yield calls
    assert calls == [], "ITK opened a file the check should have refused"


@pytest.mark.parametrize("case", list(HOSTILE))
def test_itk_itself_follows_the_file_to_the_secret(secrets, case):
    """The control: without the check, each crafted file hands another file's bytes back as parameters."""
    transform = sitk.ReadTransform(hostile(secrets, case))
    expected = SECRET_TEXT[:96] if case.endswith("text file") else SECRET.astype("<f8").tobytes()
    assert leaked(transform) == expected


@pytest.mark.parametrize("kind", ["h5", "mat"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_files_naming_other_files_are_refused_before_itk_opens_them(secrets, no_read, case, kind):
    with pytest.raises(RequestError) as caught:
        transforms.parse(field(kind, read_bytes(hostile(secrets, case))), WHERE)
    error = caught.value
    assert error.status == 400
    assert error.message.startswith(f"{WHERE}: the {kind} data is an HDF5 file that refers to other files")
    assert f"({HOSTILE[case][2]})" in error.message
    assert str(secrets) not in error.message and "secret" not in error.message


def test_a_mat_upload_holding_hdf5_is_read_as_hdf5(secrets):
    """Why `mat` uploads are checked too: ITK picks its reader by content, whatever the file is called."""
    path = secrets / "disguised.mat"
    shutil.copy(hostile(secrets, "external link"), path)
    assert leaked(sitk.ReadTransform(str(path))) == SECRET.astype("<f8").tobytes()


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda data, folder: data[: len(data) // 2], "the file is shorter than its superblock says"),
        (lambda data, folder: b"\0" * 512 + data, "a user block before the HDF5 superblock at byte 512"),
        (lambda data, folder: _with_plugin_filter(folder), "filter 32000, which HDF5 would look for as a plugin"),
    ],
    ids=["truncated", "user-block", "plugin-filter"],
)
def test_files_the_walk_cannot_vouch_for_are_refused(tmp_path, no_read, make, reason):
    data = make(read_bytes(itk_file(tmp_path / "t.h5", make_affine())), tmp_path)
    with pytest.raises(RequestError) as caught:
        transforms.parse(field("h5", data), WHERE)
    assert caught.value.status == 400
    assert caught.value.message.startswith(f"{WHERE}: the h5 data is a truncated, corrupt or unsupported HDF5 file")
    assert f"({reason})" in caught.value.message


def _with_plugin_filter(folder) -> bytes:
    path = itk_file(folder / "lzf.h5", make_affine())
    with h5py.File(path, "r+") as handle:
        handle.create_dataset("extra", data=np.zeros(64), chunks=(16,), compression="lzf")  # filter 32000
    return read_bytes(path)


def test_a_refused_truncated_file_prints_no_hdf5_error_stack(tmp_path, capfd):
    data = read_bytes(itk_file(tmp_path / "t.h5", make_affine()))
    with pytest.raises(RequestError):
        transforms.parse(field("h5", data[:3000]), WHERE)
    assert "HDF5-DIAG" not in capfd.readouterr().err


def test_itk_prints_an_error_stack_for_that_file(tmp_path, capfd):
    """The control for the test above: the same bytes given to ITK fill stderr."""
    path = tmp_path / "truncated.h5"
    path.write_bytes(read_bytes(itk_file(tmp_path / "t.h5", make_affine()))[:3000])
    with pytest.raises(RuntimeError):
        sitk.ReadTransform(str(path))
    assert "HDF5-DIAG" in capfd.readouterr().err


def test_bspline_h5_still_parses(tmp_path):
    expected = make_bspline()
    result = transforms.parse(field("h5", read_bytes(itk_file(tmp_path / "t.h5", expected))), WHERE)
    assert isinstance(result, sitk.BSplineTransform)
    np.testing.assert_array_equal(result.GetParameters(), expected.GetParameters())
    assert result.GetFixedParameters() == expected.GetFixedParameters()


@pytest.mark.parametrize("kind", ["h5", "mat"])
def test_affine_h5_and_mat_still_parse(tmp_path, kind):
    expected = make_affine()
    result = transforms.parse(field(kind, read_bytes(itk_file(tmp_path / f"t.{kind}", expected))), WHERE)
    assert isinstance(result, sitk.AffineTransform)
    assert result.GetParameters() == expected.GetParameters()
    assert result.GetFixedParameters() == expected.GetFixedParameters()


@pytest.mark.parametrize("count", [2, 10, 40])
def test_composites_with_dense_link_storage_still_parse(tmp_path, count):
    expected = composite(count)
    data = read_bytes(itk_file(tmp_path / "c.h5", expected))
    assert (b"FRHP" in data) == (count >= 8)  # a fractal heap holds the group's links
    result = transforms.parse(field("h5", data), WHERE)
    assert sitk.CompositeTransform(result).GetNumberOfTransforms() == count
    assert result.TransformPoint((1.0, 2.0, 3.0)) == expected.TransformPoint((1.0, 2.0, 3.0))


def test_the_oldest_hdf5_format_still_parses(tmp_path):
    expected = make_bspline()
    path = old_format(itk_file(tmp_path / "new.h5", expected), tmp_path / "old.h5")
    assert read_bytes(path)[8] == 0  # superblock version 0: symbol tables, version 1 object headers
    result = transforms.parse(field("h5", read_bytes(path)), WHERE)
    np.testing.assert_array_equal(result.GetParameters(), expected.GetParameters())


COMPOSITE = written_bytes(lambda path: sitk.WriteTransform(composite(10), path), ".h5")  # every structure ITK writes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(COMPOSITE) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_the_walk_raises_only_request_errors_on_damaged_files(changes):
    data = bytearray(COMPOSITE)
    for position, value in changes:
        data[position] = value
    try:
        hdf5.check(bytes(data), WHERE, "h5", "an ITK transform file")
    except RequestError as error:
        assert error.status == 400 and error.message.startswith(f"{WHERE}: the h5 data is ")


# --- over HTTP -------------------------------------------------------------------------------------


class EchoApp(TomaatApp):
    """The worst case: an app that sends the transform it was given back to the client."""

    input_interface = [Transform("moving")]
    output_interface = [TransformLinear("affine")]

    def inference(self, data):
        data["affine"] = data["moving"]
        return data


def _form(path) -> dict:
    return {"moving": field("h5", read_bytes(path)).decode("ascii")}


@pytest_twisted.ensureDeferred
async def test_server_refuses_a_linked_transform_and_says_nothing_of_the_secret(serve, secrets, leftovers):
    service = await serve(EchoApp())
    response = await slicer_post(service.url + "/predict", _form(hostile(secrets, "external link")))
    assert response.status_code == 400
    content = response.json()[0]["content"]
    assert "'moving'" in content and "refers to other files (an external link)" in content
    assert str(secrets) not in response.text and "secret" not in response.text
    assert not any(repr(value) in response.text for value in SECRET)
    good = await slicer_post(service.url + "/predict", _form(itk_file(secrets.parent / "good.h5", make_affine())))
    assert good.status_code == 200
    assert decode_item(good.json()[0]).GetParameters() == make_affine().GetParameters()
    assert leftovers() == []


@pytest_twisted.ensureDeferred
async def test_without_the_check_the_confined_decoder_still_cannot_read_the_secret(serve, secrets, monkeypatch):
    """The same upload with the walk switched off: HDF5 follows the link, but its process may open nothing."""
    monkeypatch.setattr(transforms.hdf5, "check", lambda *args: None)
    service = await serve(EchoApp())
    response = await slicer_post(service.url + "/predict", _form(hostile(secrets, "external link")))
    assert response.status_code == 400, response.text[:300]
    assert "not an ITK" in response.json()[0]["content"]
    assert str(SECRET[0]) not in response.text
    good = await slicer_post(service.url + "/predict", _form(itk_file(secrets / "good.h5", make_affine())))
    assert good.status_code == 200
