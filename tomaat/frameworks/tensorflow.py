"""TensorFlow / Keras adapter: load once, predict channels-last volumes on the GPU when TensorFlow sees one."""

from __future__ import annotations

import os

import numpy as np

from .base import Model


def _configure_gpus(tf) -> list:
    """Grow GPU memory on demand, so TensorFlow does not take the whole card from other processes."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised: growth can only be set before first use
            pass
    return gpus


class KerasModel(Model):
    """A Keras model (object, `.keras`/`.h5` file, or SavedModel folder) behind the shared `predict` API."""

    channels_last = True

    def __init__(self, model, window=None, overlap: float = 0.5, batch_size: int = 1, blend: str = "gaussian"):
        super().__init__(window, overlap, batch_size, blend)
        import tensorflow as tf

        self.gpus = _configure_gpus(tf)
        self.device = "GPU" if self.gpus else "CPU"
        self._tf = tf
        if isinstance(model, (str, os.PathLike)):
            model = load(model)
        self.model = model
        self._call = self._callable(model)

    def _callable(self, model):
        tf = self._tf
        if hasattr(model, "signatures") and not hasattr(model, "predict_on_batch"):  # a SavedModel
            signature = model.signatures["serving_default"]

            def serve(batch):
                outputs = signature(tf.constant(batch))
                return next(iter(outputs.values()))

            return serve

        @tf.function(reduce_retracing=True)
        def call(batch):
            return model(batch, training=False)

        return call

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Channels-first in (the sliding-window layout), channels-last to the model, channels-first out."""
        out = self._call(self._tf.constant(np.moveaxis(batch, 1, -1)))
        return np.moveaxis(np.asarray(out), -1, 1)


def load(path):
    """A `.keras`/`.h5` file through Keras, a SavedModel folder through tf.saved_model."""
    path = os.fspath(path)
    if os.path.isdir(path):
        import tensorflow as tf

        return tf.saved_model.load(path)
    import keras

    return keras.models.load_model(path, compile=False)


UPSTREAM_NAMES = {
    "Prediction": "tomaat.frameworks.tensorflow.KerasModel with tomaat.frameworks.Predict (TensorFlow 2; upstream's needed TensorFlow 1 sessions)"
}


def __getattr__(name: str):
    from ..extras import refusal

    raise refusal(__name__, name, UPSTREAM_NAMES.get(name))
