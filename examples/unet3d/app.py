"""Serve the trained 3D U-Net: `tomaat serve examples/unet3d/app.py --port 9000 --no-tls`.

The pre-processing is exactly what training used (train.py calls `preprocess`),
and post-processing restores the input's grid before thresholding, so labels
come back on the grid the client sent, with sub-voxel boundaries.
Set TOMAAT_UNET_FRAMEWORK=torch to serve the PyTorch twin (converted weights).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model import SPACING, WINDOW  # noqa: E402

from tomaat import LabelVolume, PlainText, TomaatApp, Volume  # noqa: E402
from tomaat.frameworks import Predict  # noqa: E402
from tomaat.processing import (  # noqa: E402
    Cast,
    Compose,
    FillHoles,
    FromNumpy,
    LargestComponent,
    PadToMultiple,
    Reorient,
    Resample,
    Restore,
    Threshold,
    ToNumpy,
    ZScore,
)

HERE = os.path.dirname(os.path.abspath(__file__))
KERAS_MODEL = os.path.join(HERE, "unet3d.keras")


def preprocess(channels: str = "last") -> Compose:
    return Compose(
        Cast(sitk.sitkFloat32),
        Reorient(),
        Resample(SPACING),
        ZScore(),
        PadToMultiple(4),
        ToNumpy(channels=channels),
    )


def load_model(framework: str):
    if framework == "torch":
        import keras
        from model import keras_to_torch

        from tomaat.frameworks.pytorch import TorchModel

        net = keras_to_torch(keras.models.load_model(KERAS_MODEL, compile=False))
        return TorchModel(net, window=WINDOW, overlap=0.5, batch_size=2), "first"
    from tomaat.frameworks.tensorflow import KerasModel

    return KerasModel(KERAS_MODEL, window=WINDOW, overlap=0.5, batch_size=2), "last"


class UNetApp(TomaatApp):
    name = "UNet3D phantom organ"
    modality = "synthetic"
    anatomy = "ellipsoid organ"
    task = "segmentation"
    description = "A small 3D U-Net at 2 mm, sliding 32^3 windows; labels on the input's grid."
    version = "1.0"
    input_interface = [Volume("images")]
    output_interface = [LabelVolume("labels", "Organ"), PlainText("summary", "Volume")]

    def __init__(self, framework: str | None = None):
        super().__init__()
        self.framework = framework or os.environ.get("TOMAAT_UNET_FRAMEWORK", "keras")
        model, channels = load_model(self.framework)  # once, at server start
        self._pre = preprocess(channels)
        self._infer = Predict(model)
        self._post = Compose(
            FromNumpy("prediction", "probabilities", reference="images", channels=channels),
            Restore("probabilities", interpolator=sitk.sitkLinear),
            Threshold(0.5, key="probabilities", out="labels"),
            LargestComponent(key="labels"),
            FillHoles(key="labels"),
        )

    def preprocess(self, data):
        return self._pre(data)

    def inference(self, data):
        return self._infer(data)

    def postprocess(self, data):
        data = self._post(data)
        labels = data["labels"]
        millilitres = float(sitk.GetArrayViewFromImage(labels).sum()) * float(np.prod(labels.GetSpacing())) / 1000
        data["summary"] = f"organ volume {millilitres:.1f} ml ({self.framework})"
        return data


app = UNetApp()
