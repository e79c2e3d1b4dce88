"""The app of the exactness tests (tests/exactness.py): its answer depends on every voxel, the pixel type and
the grid, so an answer that travelled wrong cannot pass for right. `Exact` runs one request at a time,
`ExactBatched` in batches of up to four."""

import numpy as np
import SimpleITK as sitk

from tomaat import LabelVolume, PlainText, Slider, TomaatApp, Volume


class Exact(TomaatApp):
    name = "Exact"
    input_interface = [Volume("images"), Slider("low", -5000, 5000), Slider("high", -5000, 5000)]
    output_interface = [LabelVolume("labels"), PlainText("summary")]

    def preprocess(self, data):
        data["array"] = sitk.GetArrayFromImage(data["images"]).astype(np.float64)
        return data

    def inference(self, data):
        array = data["array"]
        data["mask"] = (array >= data["low"]).astype(np.uint8) + (array >= data["high"]).astype(np.uint8)
        data["checksum"] = repr(float(array.sum()))  # the app saw exactly these voxels
        return data

    def postprocess(self, data):
        labels = sitk.GetImageFromArray(data["mask"])
        labels.CopyInformation(data["images"])
        image = data["images"]
        data["labels"] = labels
        data["summary"] = (
            f"{image.GetPixelIDTypeAsString()} {np.bincount(data['mask'].ravel()).tolist()} {data['checksum']}"
        )
        return data


class ExactBatched(Exact):
    name = "ExactBatched"
    max_batch = 4
    max_delay_ms = 20

    def inference_batch(self, items):
        return [self.inference(item) for item in items]
