"""Files other tools wrote, sent through a real server: what the app gets equals that tool's own reading.

SimpleITK round trips (the metadata keys ITK writes into MHA), MHA with MetaIO's synonyms and CRLF
line ends, nibabel's NIfTI-1 and NIfTI-2, pynrrd's NRRD with key:=value fields and LPS/RAS spaces;
every one with a non-identity direction and a non-zero origin. Then the NRRD `data file` hidden
behind a bare CR, with Landlock and without, on the server and in the client.
"""

from __future__ import annotations

import base64
import json

import nibabel as nib
import nrrd
import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from client_support import one_line_error
from conftest import image_bytes
from hostile import SECRET, hide_landlock, secret_file
from test_server_limits import _post_file
from test_untrusted_answers import INFO, _label, _predict, hostile_server  # noqa: F401 - a fixture

from tomaat import PlainText, TomaatApp, Volume
from tomaat.files import confined

# An LPS affine with a permuted, flipped direction, anisotropic spacing and a non-zero origin (x, y, z).
DIRECTION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
SPACING = np.array([0.5, 0.75, 2.0])
ORIGIN = np.array([-12.5, 40.25, 7.125])
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class GridApp(TomaatApp):
    """Answers the grid and voxels it was given, as the app sees them."""

    input_interface = [Volume("images")]
    output_interface = [PlainText("grid")]

    def inference(self, data):
        image = data["images"]
        array = sitk.GetArrayFromImage(image)
        data["grid"] = json.dumps(
            {
                "size": list(image.GetSize()),
                "spacing": list(image.GetSpacing()),
                "origin": list(image.GetOrigin()),
                "direction": list(image.GetDirection()),
                "dtype": array.dtype.str,
                "voxels": array.ravel().tolist(),
            }
        )
        return data


def _volume(dtype=np.int16, shape=(5, 4, 3)) -> np.ndarray:
    """Voxels indexed (x, y, z), none equal to another."""
    return (np.arange(np.prod(shape)) * 3 - 20).astype(dtype).reshape(shape)


def _sitk_image(dtype=np.int16) -> sitk.Image:
    image = sitk.GetImageFromArray(_volume(dtype).transpose(2, 1, 0))
    image.SetSpacing(SPACING.tolist())
    image.SetOrigin(ORIGIN.tolist())
    image.SetDirection(DIRECTION.ravel().tolist())
    return image


def _truth_from_sitk(image: sitk.Image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
        "voxels": sitk.GetArrayFromImage(image).ravel(),
    }


def _metaio(data: bytes, tmp_path) -> dict:
    """SimpleITK's MetaImageIO reading of MHA bytes: the reference for every MHA case."""
    path = tmp_path / "truth.mha"
    path.write_bytes(data)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("MetaImageIO")
    reader.SetFileName(str(path))
    return _truth_from_sitk(reader.Execute())


def _truth_from_affine(array_xyz: np.ndarray, ras_affine: np.ndarray) -> dict:
    """A grid given as a RAS voxel-to-world affine (nibabel, pynrrd's RAS) in ITK's LPS terms."""
    lps = LPS_TO_RAS @ ras_affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    return {
        "size": list(array_xyz.shape),
        "spacing": spacing.tolist(),
        "origin": (LPS_TO_RAS @ ras_affine[:3, 3]).tolist(),
        "direction": (lps / spacing).ravel().tolist(),
        "voxels": array_xyz.transpose(2, 1, 0).ravel(),
    }


def _ras_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ DIRECTION * SPACING
    affine[:3, 3] = LPS_TO_RAS @ ORIGIN
    return affine


# ---- the files -------------------------------------------------------------------------------------


def _sitk_round_trip(source_suffix: str, compress: bool):
    def make(tmp_path):
        source = tmp_path / f"source{source_suffix}"
        sitk.WriteImage(_sitk_image(), str(source), compress)
        target = tmp_path / "round.mha"
        sitk.WriteImage(sitk.ReadImage(str(source)), str(target), compress)
        data = target.read_bytes()
        assert b"ITK_" in data  # the metadata keys this server refused before
        return "round.mha", data, _metaio(data, tmp_path)

    return make


def _mha_edited(edit):
    def make(tmp_path):
        data = edit(image_bytes(_sitk_image(), ".mha"))
        return "edited.mha", data, _metaio(data, tmp_path)

    return make


def _synonyms(data: bytes) -> bytes:
    head, _, body = data.partition(b"ElementDataFile = LOCAL\n")
    head = head.replace(b"Offset = ", b"Origin = ").replace(b"TransformMatrix = ", b"Orientation = ")
    head = head.replace(b"ElementSpacing = ", b"ElementSize = ").replace(b"NDims = 3", b"  NDims\t:  3")
    return head + b"ElementByteOrderMSB = False\nElementDataFile = Local\n" + body


def _crlf(data: bytes) -> bytes:
    head, _, body = data.partition(b"ElementDataFile = LOCAL\n")
    return (head + b"ElementDataFile = LOCAL\n").replace(b"\n", b"\r\n") + body


def _nibabel(kind: str):
    def make(tmp_path):
        array = _volume()
        affine = _ras_affine()
        truth_array = array.astype(np.float64)
        if kind in ("nifti2", "nifti2-gz"):
            image = nib.Nifti2Image(array, affine)
        else:
            image = nib.Nifti1Image(array[..., None] if kind == "4d-one-volume" else array, affine)
        if kind == "extension":
            image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment from nibabel\0\0"))
        if kind == "scaled":
            image.header.set_slope_inter(0.5, -3.0)
            truth_array = array * 0.5 - 3.0
        if kind == "qform-only":
            image.set_qform(affine, code=1)
            image.set_sform(None, code=0)
        name = "scan.nii.gz" if kind == "nifti2-gz" else "scan.nii"
        path = tmp_path / name
        nib.save(image, str(path))
        back = nib.load(str(path))
        assert np.allclose(np.squeeze(back.get_fdata()), truth_array)  # nibabel's own reading
        return name, path.read_bytes(), _truth_from_affine(np.squeeze(back.get_fdata()), back.affine)

    return make


def _pynrrd(space: str, gzip_encoded: bool):
    def make(tmp_path):
        array = _volume(np.float32)
        lps = DIRECTION * SPACING
        flip = np.eye(3) if space == "left-posterior-superior" else LPS_TO_RAS
        header = {
            "space": space,
            "space directions": (flip @ lps).T,  # one row per axis
            "space origin": flip @ ORIGIN,
            "kinds": ["domain"] * 3,
            "encoding": "gzip" if gzip_encoded else "raw",
            "tomaat test": "a custom field",
            "Segment0_Name": "liver: the whole organ",
        }
        path = tmp_path / "scan.nrrd"
        nrrd.write(str(path), array, header, custom_field_map={"tomaat test": "string"})
        data = path.read_bytes()
        assert b":=" in data and space.encode() in data
        read, fields = nrrd.read(str(path))  # pynrrd's own reading
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(fields["space directions"], dtype=float).T
        affine[:3, 3] = fields["space origin"]
        if (
            space == "left-posterior-superior"
        ):  # pynrrd leaves the space as written; RAS is what _truth_from_affine takes
            affine[:3] = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
        return "scan.nrrd", data, _truth_from_affine(read, affine)

    return make


CASES = {
    "sitk mha->mha": _sitk_round_trip(".mha", False),
    "sitk mha->mha compressed": _sitk_round_trip(".mha", True),
    "sitk nii.gz->mha": _sitk_round_trip(".nii.gz", False),
    "sitk nii.gz->mha compressed": _sitk_round_trip(".nii.gz", True),
    "sitk nrrd->mha": _sitk_round_trip(".nrrd", False),
    "sitk nrrd->mha compressed": _sitk_round_trip(".nrrd", True),
    "mha synonyms": _mha_edited(_synonyms),
    "mha crlf": _mha_edited(_crlf),
    "nibabel extension": _nibabel("extension"),
    "nibabel scl_slope": _nibabel("scaled"),
    "nibabel qform only": _nibabel("qform-only"),
    "nibabel 4-d one volume": _nibabel("4d-one-volume"),
    "nibabel nifti-2 .nii": _nibabel("nifti2"),
    "nibabel nifti-2 .nii.gz": _nibabel("nifti2-gz"),
    "pynrrd lps raw": _pynrrd("left-posterior-superior", False),
    "pynrrd ras gzip": _pynrrd("right-anterior-superior", True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest_twisted.ensureDeferred
async def test_a_file_another_tool_wrote_reaches_the_app_as_that_tool_reads_it(serve, tmp_path, case):
    service = await serve(GridApp())
    name, data, truth = CASES[case](tmp_path)
    response = await _post_file(service.url + "/predict", "images", name, data)
    assert response.status_code == 200, response.text[:400]
    got = json.loads(response.json()[0]["content"])
    assert got["size"][: len(truth["size"])] == truth["size"] and set(got["size"][len(truth["size"]) :]) <= {1}
    dims = len(truth["size"])
    assert np.allclose(got["spacing"][:dims], truth["spacing"], atol=1e-6)
    assert np.allclose(got["origin"][:dims], truth["origin"], atol=1e-5)
    direction = np.asarray(got["direction"]).reshape(len(got["size"]), -1)[:dims, :dims]
    assert np.allclose(direction.ravel(), truth["direction"], atol=1e-6)
    assert np.array_equal(np.asarray(got["voxels"], dtype=np.float64), np.asarray(truth["voxels"], np.float64))


# ---- a NRRD `data file` behind a bare CR ------------------------------------------------------------


def _cr_hidden(target: str) -> bytes:
    """teem ends a header line at a bare CR: this names `target` as the data file."""
    return (
        f"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nendian: little\nencoding: raw\n"
        f"content: x\rdata file: {target}\n\n"
    ).encode() + bytes(128)


def _cases(tmp_path) -> dict[str, bytes]:
    return {"server file": _cr_hidden(secret_file(tmp_path)), "its own file": _cr_hidden("input.nrrd")}


@pytest.fixture(params=["landlock", "no-landlock"])
def decoders(request, tmp_path, monkeypatch):
    """The server's decoders with Landlock where the kernel offers it, and as the documented fallback without."""
    if request.param == "landlock" and not confined.landlock_available():
        pytest.skip("this kernel offers no Landlock")
    if request.param == "no-landlock":
        hide_landlock(tmp_path, monkeypatch)
    pool = confined.DecoderPool(size=1)
    monkeypatch.setattr(confined, "POOL", pool)
    yield request.param
    pool.close()


def test_control_itk_reads_the_file_a_cr_hidden_data_file_names(tmp_path):
    path = tmp_path / "hidden.nrrd"
    path.write_bytes(_cr_hidden(secret_file(tmp_path)))
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NrrdImageIO")
    reader.SetFileName(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(reader.Execute()).ravel(), SECRET)


@pytest.mark.parametrize("case", ["server file", "its own file"])
@pytest_twisted.ensureDeferred
async def test_a_cr_hidden_data_file_is_refused_by_the_server(serve, tmp_path, leftovers, decoders, case):
    service = await serve(GridApp())
    data = _cases(tmp_path)[case]
    response = await _post_file(service.url + "/predict", "images", "hidden.nrrd", data)
    assert response.status_code == 415, response.text[:400]
    message = response.json()[0]["content"]
    assert "detached NRRD headers are not accepted (the header names a data file)" in message
    assert "\n" not in message and str(tmp_path) not in message
    for leaked in (SECRET.tobytes()[:16], data[:16]):
        assert base64.b64encode(leaked).decode()[:20] not in response.text
    assert leftovers() == []
    for decoder in service.decoders.decoders:  # the file never reached a decoder, confined or not
        assert decoder.ready.get("landlock", 0) >= (1 if decoders == "landlock" else 0)


@pytest.mark.parametrize("case", ["server file", "its own file"])
@pytest_twisted.ensureDeferred
async def test_a_cr_hidden_data_file_in_an_answer_is_refused_by_the_client(hostile_server, tmp_path, case):  # noqa: F811
    hostile_server.answer = _label(_cases(tmp_path)[case])
    result = await _predict(hostile_server, tmp_path)
    assert result.returncode == 3
    assert "detached NRRD" in one_line_error(result)
    out = tmp_path / "out"
    assert not out.exists() or all(SECRET.tobytes() not in f.read_bytes() for f in out.iterdir())
