"""A classical app on real data: brain mask of a T1 MRI by intensity and morphology, no training.

Serve it with `tomaat serve examples/brain_mask.py --port 9000 --no-tls`. Otsu
separates tissue from background; an erosion cuts the thin bridges between
brain and scalp, the largest component is the brain, a dilation gives back
what the erosion took, and hole filling closes the ventricles. Works in mm, so
the same radii fit any voxel size.
"""

import numpy as np
import SimpleITK as sitk

from tomaat import LabelVolume, PlainText, Slider, TomaatApp, Volume, VTKMesh
from tomaat.processing import FillHoles, LargestComponent, label_to_vtk


def _radius(image: sitk.Image, millimetres: float) -> list[int]:
    return [max(1, int(round(millimetres / s))) for s in image.GetSpacing()]


def brain_mask(image: sitk.Image, erosion_mm: float = 4.0) -> sitk.Image:
    smoothed = sitk.CurvatureFlow(sitk.Cast(image, sitk.sitkFloat32), timeStep=0.0625, numberOfIterations=3)
    tissue = sitk.OtsuThreshold(smoothed, 0, 1)
    # a second Otsu inside the tissue drops dark CSF and skull-adjacent dura from the seed
    tissue = sitk.OtsuThreshold(sitk.Mask(smoothed, tissue), 0, 1) * tissue
    radius = _radius(image, erosion_mm)
    core = sitk.BinaryErode(tissue, radius, sitk.sitkBall)
    core = LargestComponent().apply(core)
    mask = sitk.BinaryDilate(core, radius, sitk.sitkBall) * tissue  # back to the tissue edge, not beyond
    mask = sitk.BinaryMorphologicalClosing(mask, _radius(image, 6.0), sitk.sitkBall)
    mask = FillHoles().apply(LargestComponent().apply(sitk.Cast(mask, sitk.sitkUInt8)))
    mask.CopyInformation(image)
    return mask


class BrainMaskApp(TomaatApp):
    name = "Brain mask (classical)"
    modality = "MRI T1"
    anatomy = "brain"
    task = "segmentation"
    description = "Otsu, erosion, largest component, dilation, closing, hole filling; mask, surface and volume."
    version = "1.0"
    input_interface = [Volume("images"), Slider("erosion_mm", 1, 10)]
    output_interface = [LabelVolume("labels", "Brain mask"), VTKMesh("surface", "Brain surface"), PlainText("volume")]

    def inference(self, data):
        data["labels"] = brain_mask(data["images"], float(data.get("erosion_mm") or 4.0))
        return data

    def postprocess(self, data):
        labels = data["labels"]
        data["surface"] = label_to_vtk(labels, 1, smoothing=1.0)
        voxels = int(sitk.GetArrayViewFromImage(labels).sum())
        millilitres = voxels * float(np.prod(labels.GetSpacing())) / 1000.0
        data["volume"] = f"brain mask: {millilitres:.1f} ml ({voxels} voxels)"
        return data


app = BrainMaskApp()
