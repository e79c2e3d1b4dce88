"""A classical app: label every voxel at or above a threshold, and say how much tissue that is.

Serve it with `tomaat serve examples/threshold.py --port 9000 --no-tls`.
"""

import numpy as np
import SimpleITK as sitk

from tomaat import LabelVolume, PlainText, Slider, TomaatApp, Volume


class ThresholdApp(TomaatApp):
    name = "Threshold"
    modality = "any"
    anatomy = "any"
    task = "segmentation"
    description = "Labels voxels at or above a threshold; reports their count and volume."
    version = "1.0"
    input_interface = [Volume("images"), Slider("threshold", 0, 1000)]
    output_interface = [LabelVolume("labels", "Threshold mask"), PlainText("summary", "Summary")]

    def preprocess(self, data):
        data["array"] = sitk.GetArrayViewFromImage(data["images"])
        return data

    def inference(self, data):
        data["mask"] = (data["array"] >= data["threshold"]).astype(np.uint8)
        return data

    def postprocess(self, data):
        labels = sitk.GetImageFromArray(data["mask"])
        labels.CopyInformation(data["images"])
        count = int(data["mask"].sum())
        millilitres = count * float(np.prod(data["images"].GetSpacing())) / 1000.0
        data["labels"] = labels
        data["summary"] = f"{count} voxels at or above {data['threshold']:g}: {millilitres:.3f} ml"
        return data


app = ThresholdApp()
