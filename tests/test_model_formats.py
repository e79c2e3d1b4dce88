"""TorchScript and ONNX files of one small network, served through a real server: the same answers as in-process.

The network (two 3D convolutions, fixed seed) is exported here in each format, so nothing
is committed. Each file is served by an app whose steps reorient, resample and normalise,
on a rotated, offset, anisotropic grid; the served labels equal the in-process app's voxel
for voxel, and the logits equal the PyTorch module's within float tolerance.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from conftest import assert_same_grid

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch.onnx.export's exporter

from tomaat import LabelVolume, TomaatApp, Volume  # noqa: E402
from tomaat.client import AsyncClient  # noqa: E402
from tomaat.frameworks import Predict  # noqa: E402
from tomaat.frameworks.onnx import OnnxModel  # noqa: E402
from tomaat.frameworks.pytorch import TorchModel  # noqa: E402
from tomaat.frameworks.trusted_files import refuse_untrusted  # noqa: E402
from tomaat.processing import Argmax, Cast, Compose, FromNumpy, Reorient, Resample, Restore, ToNumpy, ZScore  # noqa: E402

WINDOW = (16, 16, 16)
SPACING = (1.5, 1.5, 1.5)


def tiny_net():
    torch.manual_seed(7)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(6, 3, 3, padding=1)
    ).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The network as a module, a TorchScript file, and ONNX files with dynamic and with fixed shapes."""
    folder = tmp_path_factory.mktemp("models")
    os.chmod(folder, 0o755)
    net = tiny_net()
    example = torch.zeros(1, 1, *WINDOW)
    torch.jit.trace(net, example).save(str(folder / "net.pt"))
    auto = torch.export.Dim.AUTO
    torch.onnx.export(
        net,
        (example,),
        str(folder / "dynamic.onnx"),
        input_names=["volume"],
        output_names=["logits"],
        dynamic_shapes=({0: auto, 2: auto, 3: auto, 4: auto},),
        external_data=False,
        verbose=False,
    )
    torch.onnx.export(  # fixed batch of 2 and spatial size: the model's shape is the window
        net,
        (torch.zeros(2, 1, *WINDOW),),
        str(folder / "window.onnx"),
        input_names=["volume"],
        output_names=["logits"],
        external_data=False,
        verbose=False,
    )
    return net, folder


def make_app(model):
    class FormatApp(TomaatApp):
        name, modality, task = "Tiny net", "synthetic", "segmentation"
        input_interface = [Volume("images")]
        output_interface = [LabelVolume("labels", "Classes"), LabelVolume("logits", "Logits")]
        preprocess = Compose(Cast(sitk.sitkFloat32), Reorient(), Resample(SPACING), ZScore(), ToNumpy(channels="first"))
        inference = Predict(model)
        postprocess = Compose(
            FromNumpy("prediction", "logits", reference="images", channels="first"),
            Restore("logits", interpolator=sitk.sitkLinear),
            Argmax(key="logits", out="labels"),
        )

        def setup(self, device):
            model.setup(device)  # onto the device the server picked, before its port opens

    return FormatApp()


def oblique_volume(path) -> sitk.Image:
    """A blob on noise, on a rotated grid with a far origin and unequal spacings, written as MetaImage."""
    rng = np.random.default_rng(11)
    z, y, x = np.mgrid[:22, :27, :31]
    array = 100.0 * np.exp(-((x - 14) ** 2 / 40 + (y - 12) ** 2 / 30 + (z - 10) ** 2 / 20)) + rng.normal(size=x.shape)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((0.9, 1.7, 2.6))
    image.SetOrigin((-83.5, 41.25, 17.0))
    rotation = sitk.VersorTransform((0.3, -0.5, 0.8), 0.7)
    image.SetDirection(rotation.GetMatrix())
    sitk.WriteImage(image, str(path))
    return sitk.ReadImage(str(path))


def assert_logits_close(served: sitk.Image, reference: sitk.Image) -> None:
    served_logits, reference_logits = sitk.GetArrayFromImage(served), sitk.GetArrayFromImage(reference)
    np.testing.assert_allclose(served_logits, reference_logits, rtol=1e-4, atol=1e-4)


def assert_labels_follow_logits(labels: sitk.Image, logits: sitk.Image) -> None:
    """Labels from a different runtime may differ only where two classes' logits tie within float rounding."""
    values = sitk.GetArrayFromImage(logits)
    top = np.sort(values, axis=-1)
    clear = top[..., -1] - top[..., -2] > 1e-4
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels)[clear], values.argmax(-1)[clear])


FORMATS = {
    "torchscript": lambda folder: TorchModel(str(folder / "net.pt")),
    "torchscript-window": lambda folder: TorchModel(str(folder / "net.pt"), window=WINDOW, batch_size=3),
    "onnx": lambda folder: OnnxModel(folder / "dynamic.onnx"),
    "onnx-window": lambda folder: OnnxModel(folder / "dynamic.onnx", window=WINDOW, batch_size=3),
    "onnx-fixed-shape": lambda folder: OnnxModel(folder / "window.onnx"),  # window and batch of 2 from the file
}


@pytest.mark.parametrize("kind", sorted(FORMATS))
@pytest_twisted.ensureDeferred
async def test_a_served_model_file_answers_as_in_process(kind, exported, serve, tmp_path):
    net, folder = exported
    image = oblique_volume(tmp_path / "volume.mha")
    served_model = FORMATS[kind](folder)
    service = await serve(make_app(served_model), device="cpu")
    if kind == "onnx-fixed-shape":
        assert (served_model.window, served_model.fixed_batch) == (WINDOW, 2)
    if "torchscript" in kind:
        assert served_model.device.type == "cpu" and served_model.model is not None  # read at setup
    client = AsyncClient(service.url + "/predict", known_hosts=str(tmp_path / "kh.json"))
    result = await client.predict({"images": str(tmp_path / "volume.mha")})

    assert_same_grid(result["labels"], image, 1e-9)
    assert_same_grid(result["logits"], image, 1e-9)
    in_process = make_app(FORMATS[kind](folder))({"images": image})
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(result["labels"]), sitk.GetArrayFromImage(in_process["labels"])
    )
    assert_logits_close(result["logits"], in_process["logits"])
    labels = sitk.GetArrayFromImage(result["labels"])
    assert len(np.unique(labels)) > 1  # the network does tell voxels apart

    window = WINDOW if "window" in kind or "fixed" in kind else None
    module = make_app(TorchModel(net, window=window, batch_size=3))({"images": image})
    assert_logits_close(result["logits"], module["logits"])
    assert_labels_follow_logits(result["labels"], module["logits"])


def test_onnx_and_torchscript_agree_with_the_module_on_arrays(exported):
    net, folder = exported
    array = np.random.default_rng(3).normal(size=(2, 1, 21, 18, 16)).astype(np.float32)
    expected = TorchModel(net).predict(array)
    for model in (OnnxModel(folder / "dynamic.onnx"), TorchModel(str(folder / "net.pt"))):
        np.testing.assert_allclose(model.predict(array), expected, rtol=1e-5, atol=1e-5)
    fixed = OnnxModel(folder / "window.onnx", device="cpu")
    windowed = TorchModel(net, window=WINDOW, batch_size=2).predict(array)
    np.testing.assert_allclose(fixed.predict(array), windowed, rtol=1e-5, atol=1e-5)
    many = fixed.predict_many([array[:1], array[1:]])
    np.testing.assert_allclose(np.concatenate(many), windowed, rtol=1e-5, atol=1e-5)


def test_onnx_refuses_a_window_its_fixed_shape_cannot_run(exported):
    _, folder = exported
    with pytest.raises(ValueError, match=r"window \(32, 32, 32\) differs from the exported model's input size"):
        OnnxModel(folder / "window.onnx", window=(32, 32, 32), device="cpu")


def test_onnx_picks_cuda_only_when_it_has_it():
    from tomaat.frameworks.onnx import _providers_for

    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _providers_for("auto", cuda) == cuda
    assert _providers_for("cuda:1", cuda) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert _providers_for("cuda", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert _providers_for("cpu", cuda) == ["CPUExecutionProvider"]


# Model files from places other users can write are refused: loading TorchScript runs its code.


def private_copy(source, folder) -> str:
    folder.mkdir(mode=0o755, exist_ok=True)
    os.chmod(folder, 0o755)
    target = folder / os.path.basename(source)
    target.write_bytes(open(source, "rb").read())
    os.chmod(target, 0o644)
    return str(target)


@pytest.mark.parametrize("load", [TorchModel, OnnxModel], ids=["torchscript", "onnx"])
def test_a_world_writable_model_file_is_refused(load, exported, tmp_path):
    _, folder = exported
    name = "net.pt" if load is TorchModel else "dynamic.onnx"
    path = private_copy(folder / name, tmp_path / "mine")
    os.chmod(path, 0o666)
    with pytest.raises(ValueError, match=rf"^refusing to load the model at {path}: {path} is writable by other users"):
        load(path)


@pytest.mark.parametrize("load", [TorchModel, OnnxModel], ids=["torchscript", "onnx"])
def test_a_model_below_a_world_writable_folder_is_refused(load, exported, tmp_path):
    _, folder = exported
    name = "net.pt" if load is TorchModel else "dynamic.onnx"
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # no sticky bit: anyone may rename "inner" and put their own in its place
    path = private_copy(folder / name, shared / "inner")
    message = rf"^refusing to load the model at {path}: {shared} is writable by other users without the sticky bit"
    with pytest.raises(ValueError, match=message):
        load(path)
    os.chmod(shared, 0o777 | stat.S_ISVTX)  # as /tmp: others cannot replace what is not theirs
    load(path, device="cpu")


def test_sticky_folders_like_tmp_are_accepted_and_links_are_followed(exported, tmp_path):
    _, folder = exported
    assert os.stat("/tmp").st_mode & stat.S_ISVTX
    path = private_copy(folder / "net.pt", tmp_path / "mine")
    refuse_untrusted(path)
    open_place = tmp_path / "open"
    open_place.mkdir()
    os.chmod(open_place, 0o777)
    link = open_place / "net.pt"
    link.symlink_to(path)
    with pytest.raises(ValueError, match="without the sticky bit"):
        refuse_untrusted(link)  # the link itself can be swapped
    linked_folder = tmp_path / "linked"
    linked_folder.symlink_to(tmp_path / "mine")  # as /bin -> usr/bin: a link's own mode 0o777 means nothing
    refuse_untrusted(linked_folder / "net.pt")
    inside = tmp_path / "mine" / "folder"
    inside.mkdir()
    os.chmod(inside, 0o755)
    refuse_untrusted(tmp_path / "mine")
    (inside / "weights.bin").write_bytes(b"0")
    os.chmod(inside / "weights.bin", 0o646)
    with pytest.raises(ValueError, match=r"weights.bin is writable by other users"):
        refuse_untrusted(tmp_path / "mine")  # a model folder is checked with everything in it
    with pytest.raises(ValueError, match=r"^cannot read the model at .*missing.pt: No such file or directory$"):
        refuse_untrusted(tmp_path / "missing.pt")


def test_a_torchscript_file_is_read_at_setup_onto_its_device(exported):
    _, folder = exported
    model = TorchModel(str(folder / "net.pt"))
    assert model.model is None  # not read while the app is built
    model.setup("cpu")
    assert model.device.type == "cpu"
    assert next(model.model.parameters()).device.type == "cpu"
