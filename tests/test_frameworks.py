"""Framework adapters with tiny models built here: sliding windows agree with whole-volume inference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tomaat.frameworks import Predict, positions, sliding_window, sliding_windows

SHAPE = (37, 30, 26)  # not a multiple of the window, so the last windows sit flush with the end
WINDOW = (16, 16, 16)


def volume(channels_last: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    array = rng.normal(size=SHAPE).astype(np.float32)
    return array[None, ..., None] if channels_last else array[None, None]


def assert_close_to_whole(windowed: np.ndarray, whole: np.ndarray) -> None:
    """Window edges see zero padding the whole volume does not; Gaussian blending makes that negligible."""
    assert windowed.shape == whole.shape
    difference = np.abs(windowed - whole)
    scale = np.abs(whole).max()
    assert difference.mean() < 5e-4 * scale and difference.max() < 1e-2 * scale


def test_positions_cover_the_axis():
    assert positions(10, 16, 0.5) == [0]
    assert positions(37, 16, 0.5) == [0, 7, 14, 21]
    starts = positions(100, 32, 0.25)
    assert starts[0] == 0 and starts[-1] == 68 and max(np.diff(starts)) <= 24


def test_sliding_window_of_a_pointwise_model_is_exact():
    array = volume(channels_last=False)[0]
    out = sliding_window(array, (8, 8, 8), lambda batch: batch * 2 + 1, overlap=0.3, batch_size=3)
    np.testing.assert_allclose(out, array * 2 + 1, rtol=1e-5, atol=1e-5)


def test_tensorflow_sliding_window_matches_whole_volume(tmp_path):
    keras = pytest.importorskip("keras")
    from tomaat.frameworks.tensorflow import KerasModel

    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, None, 1))
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv3D(2, 3, padding="same")(x)
    model = keras.Model(inputs, keras.layers.Softmax()(x))
    path = tmp_path / "tiny.keras"
    model.save(path)

    array = volume(channels_last=True)
    whole = KerasModel(model).predict(array)
    assert whole.shape == array.shape[:-1] + (2,)
    windowed = KerasModel(str(path), window=WINDOW, overlap=0.5, batch_size=2).predict(array)
    assert_close_to_whole(windowed, whole)
    data = Predict(KerasModel(path))({"array": array})
    np.testing.assert_allclose(data["prediction"], whole, atol=1e-5)


def test_pytorch_sliding_window_matches_whole_volume(tmp_path):
    torch = pytest.importorskip("torch")
    from tomaat.frameworks.pytorch import TorchModel

    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3, padding=1), torch.nn.Softmax(1)
    )
    path = tmp_path / "tiny.pt"
    torch.jit.script(net).save(str(path))

    array = volume(channels_last=False)
    whole = TorchModel(net).predict(array)
    assert whole.shape == (1, 2) + SHAPE
    windowed = TorchModel(str(path), window=WINDOW, overlap=0.5, batch_size=2).predict(array)
    assert_close_to_whole(windowed, whole)
    assert TorchModel(net, half=True).half is torch.cuda.is_available()


def _tiny_torch_net(torch):
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3, padding=1), torch.nn.Softmax(1)
    ).eval()


def test_an_exported_pt2_file_sets_the_window_and_fills_its_fixed_batch(tmp_path):
    torch = pytest.importorskip("torch")
    from tomaat.frameworks.pytorch import TorchModel

    net = _tiny_torch_net(torch)
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(5, 1, *WINDOW),)), str(path))
    array = volume(channels_last=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the point of .pt2: no TorchScript
        model = TorchModel(str(path), batch_size=1)
        assert (model.window, model.batch_size) == (WINDOW, 5)
        windowed = model.predict(array)  # 36 windows: the eighth batch holds one and four zero windows
    assert_close_to_whole(windowed, TorchModel(net).predict(array))
    exact = model.predict(array[:, :, :16, :16, :16])  # one window, batch filled up to 5
    np.testing.assert_allclose(exact, TorchModel(net).predict(array[:, :, :16, :16, :16]), atol=1e-6)


def test_an_exported_program_with_dynamic_shapes_runs_whole_volumes_or_any_window():
    torch = pytest.importorskip("torch")
    from tomaat.frameworks.pytorch import TorchModel

    net = _tiny_torch_net(torch)
    auto = torch.export.Dim.AUTO
    program = torch.export.export(
        net, (torch.zeros(2, 1, *WINDOW),), dynamic_shapes=({0: auto, 2: auto, 3: auto, 4: auto},)
    )
    array = volume(channels_last=False)
    whole = TorchModel(net).predict(array)
    np.testing.assert_allclose(TorchModel(program).predict(array), whole, atol=1e-6)
    windowed = TorchModel(program, window=WINDOW, batch_size=3)
    assert windowed.fixed_batch is None and windowed.batch_size == 3
    assert_close_to_whole(windowed.predict(array), whole)


def test_an_exported_program_refuses_a_window_it_cannot_run():
    torch = pytest.importorskip("torch")
    from tomaat.frameworks.pytorch import TorchModel

    program = torch.export.export(_tiny_torch_net(torch), (torch.zeros(1, 1, *WINDOW),))
    with pytest.raises(
        ValueError, match=r"window \(32, 32, 32\) differs from the exported model's input size \(16, 16, 16\)"
    ):
        TorchModel(program, window=(32, 32, 32))


# Batched prediction: several requests' volumes through shared forward passes, each result as if alone.

SHAPES = ((37, 30, 26), (20, 17, 16), (16, 16, 16), (37, 30, 26))  # the third is the window: a whole volume
# 36 + 4 + 36 windows in passes of 5, and the whole volume: 17 passes, where each alone takes 8 + 1 + 1 + 8
POOLED_PASSES = 16 + 1


def volumes(channels_last: bool, shapes=SHAPES) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    arrays = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
    return [array[None, ..., None] if channels_last else array[None, None] for array in arrays]


class Counting:
    """Counts a model's forward passes (its `_run` calls)."""

    def __init__(self, model):
        self.calls, self._run = 0, model._run
        model._run = self

    def __call__(self, batch):
        self.calls += 1
        return self._run(batch)


def assert_each_as_alone(model, arrays) -> None:
    alone = [model.predict(array) for array in arrays]
    counting = Counting(model)
    together = model.predict_many(arrays)
    assert len(together) == len(arrays)
    for one, many in zip(alone, together, strict=True):
        assert many.shape == one.shape
        np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-6)
    return counting.calls


def test_sliding_windows_of_several_volumes_give_each_volume_its_own_result():
    def per_window(batch):  # depends on each window only, so batching cannot change a window's output
        return np.tanh(batch) + batch.mean(axis=(2, 3, 4), keepdims=True)

    arrays = [array[0] for array in volumes(channels_last=False)]
    together = sliding_windows(arrays, WINDOW, per_window, overlap=0.5, batch_size=5)
    for array, result in zip(arrays, together, strict=True):
        np.testing.assert_array_equal(result, sliding_window(array, WINDOW, per_window, overlap=0.5, batch_size=5))


def test_tensorflow_predict_many_matches_predicting_each_alone():
    keras = pytest.importorskip("keras")
    from tomaat.frameworks.tensorflow import KerasModel

    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, None, 1))
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Conv3D(2, 3, padding="same")(x))
    windowed = KerasModel(model, window=WINDOW, overlap=0.5, batch_size=5)
    assert assert_each_as_alone(windowed, volumes(channels_last=True)) == POOLED_PASSES
    whole = KerasModel(model)
    same = volumes(channels_last=True, shapes=((20, 17, 16), (20, 17, 16), (12, 10, 8), (20, 17, 16)))
    assert assert_each_as_alone(whole, same) == 2  # one pass for the three of one shape, one for the other


def test_pytorch_predict_many_matches_predicting_each_alone():
    torch = pytest.importorskip("torch")
    from tomaat.frameworks.pytorch import TorchModel

    net = _tiny_torch_net(torch)
    arrays = volumes(channels_last=False)
    assert assert_each_as_alone(TorchModel(net, window=WINDOW, overlap=0.5, batch_size=5), arrays) == POOLED_PASSES
    same = volumes(channels_last=False, shapes=((20, 17, 16), (20, 17, 16), (12, 10, 8)))
    assert assert_each_as_alone(TorchModel(net), same) == 2
    program = torch.export.export(net, (torch.zeros(5, 1, *WINDOW),))  # a fixed batch of 5, filled with zeros
    assert assert_each_as_alone(TorchModel(program), arrays[:2]) == 8  # 36 + 4 windows in passes of 5


def test_an_app_whose_inference_is_predict_batches_by_setting_max_batch():
    torch = pytest.importorskip("torch")
    from tomaat import TomaatApp
    from tomaat.frameworks.pytorch import TorchModel

    model = TorchModel(_tiny_torch_net(torch), window=WINDOW, overlap=0.5, batch_size=8)

    class Batched(TomaatApp):
        max_batch = 4
        inference = Predict(model)

    arrays = volumes(channels_last=False)
    alone = [Batched().run_inference({"array": array})["prediction"] for array in arrays]
    counting = Counting(model)
    items = [{"array": array, "id": index} for index, array in enumerate(arrays)]
    results = Batched().run_inference_batch(items)
    assert [result["id"] for result in results] == [0, 1, 2, 3]
    for one, result in zip(alone, results, strict=True):
        np.testing.assert_allclose(result["prediction"], one, rtol=1e-5, atol=1e-6)
    assert counting.calls == 10 + 1  # 76 windows in passes of 8 (alone: 5 + 1 + 5), and the whole 16^3 volume
