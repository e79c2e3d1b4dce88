"""Make tests/nnunet_model/: a tiny nnU-Net v2 model trained with nnU-Net's own commands (a few MB).

`.venv/bin/python tests/make_nnunet_model.py` (CPU, about eight minutes on two busy cores) writes a synthetic dataset
of six two-channel volumes ("T1", "FLAIR") into a temporary nnUNet_raw, with a bright ellipsoid ("core", label 1)
inside a shell ("rim", label 2), each case on its own rotated, offset, anisotropic grid; then runs

    nnUNetv2_extract_fingerprint -d 901 -np 1
    nnUNetv2_plan_experiment -d 901
    (the 3d_fullres plan shrunk here: three stages of 4, 8, 16 features, one convolution each, patch 16x32x32)
    nnUNetv2_preprocess -d 901 -c 3d_fullres -np 1
    nnUNetv2_train 901 3d_fullres 0 -device cpu, for one epoch (250 iterations) instead of 1000 (see train())

and copies the results folder's plans.json, dataset.json, dataset_fingerprint.json and fold_0/checkpoint_final.pth
into tests/nnunet_model/ (nothing else: no preprocessed data, logs or validation). Training is not deterministic, so
a rerun gives other weights: the tests compare our server with nnU-Net's own prediction of the same model, never
with fixed numbers. `--keep DIR` works in DIR and leaves it for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
OUT = HERE / "nnunet_model"
DATASET = "Dataset901_TinyNNUNet"
EPOCHS = 1
CASES = 6


def rotation(angles: tuple[float, float, float]) -> tuple[float, ...]:
    """A proper rotation (a direction cosine matrix) from three Euler angles in radians."""
    transform = sitk.Euler3DTransform()
    transform.SetRotation(*angles)
    return tuple(transform.GetMatrix())


def case(rng: np.random.Generator, index: int) -> tuple[list[sitk.Image], sitk.Image]:
    """Two channels and the label of one synthetic case, on a grid of its own."""
    size = (int(rng.integers(34, 42)), int(rng.integers(32, 40)), int(rng.integers(14, 18)))  # x, y, z
    spacing = (float(rng.uniform(0.8, 1.0)), float(rng.uniform(0.75, 0.95)), float(rng.uniform(2.2, 2.8)))
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size[::-1]), indexing="ij")
    centre = [n / 2 + rng.uniform(-3, 3) for n in size]
    radii = [rng.uniform(6, 9), rng.uniform(6, 9), rng.uniform(6, 9)]  # mm
    distance = np.sqrt(
        sum(((g - c) * s / r) ** 2 for g, c, s, r in zip((xx, yy, zz), centre, spacing, radii, strict=True))
    )
    label = np.zeros(distance.shape, np.uint8)
    label[distance < 1.6] = 2
    label[distance < 1.0] = 1
    t1 = 100 + 80 * (label == 1) + 20 * (label == 2) + rng.normal(0, 15, label.shape)
    flair = 200 + 10 * (label == 1) + 120 * (label == 2) + rng.normal(0, 20, label.shape)
    angles = tuple(float(a) for a in rng.uniform(-0.5, 0.5, 3))
    origin = tuple(float(o) for o in rng.uniform(-80, 80, 3))
    images = []
    for array in (t1.astype(np.float32), flair.astype(np.float32), label):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(rotation(angles))
        images.append(image)
    return images[:2], images[2]


def write_dataset(raw: Path) -> None:
    folder = raw / DATASET
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(901)
    for index in range(CASES):
        channels, label = case(rng, index)
        for channel, image in enumerate(channels):
            sitk.WriteImage(image, str(folder / "imagesTr" / f"tiny_{index:03d}_{channel:04d}.nii.gz"))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"tiny_{index:03d}.nii.gz"))
    dataset = {
        "name": "Tiny nnU-Net test model",
        "description": "Synthetic ellipsoids in a shell; a test fixture, not a model of anything real",
        "reference": "tests/make_nnunet_model.py",
        "licence": "CC0-1.0",
        "release": "1.0",
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": {"background": 0, "core": 1, "rim": 2},
        "numTraining": CASES,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


def shrink_plans(plans_file: Path) -> None:
    """Three stages of 4/8/16 features and one convolution each: a checkpoint of a few hundred KB."""
    plans = json.loads(plans_file.read_text())
    config = plans["configurations"]["3d_fullres"]
    config["patch_size"] = [16, 32, 32]
    config["batch_size"] = 2
    kwargs = config["architecture"]["arch_kwargs"]
    kwargs.update(
        n_stages=3,
        features_per_stage=[4, 8, 16],
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[1, 1, 1],
        n_conv_per_stage_decoder=[1, 1],
    )
    plans["configurations"] = {"3d_fullres": config}
    plans_file.write_text(json.dumps(plans, indent=2))


def run(*command: str, env: dict) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, env=env, check=True)


def make(work: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "nnUNet_raw": str(work / "raw"),
        "nnUNet_preprocessed": str(work / "preprocessed"),
        "nnUNet_results": str(work / "results"),
        "OMP_NUM_THREADS": "2",
    }
    write_dataset(work / "raw")
    run(str(bin_dir / "nnUNetv2_extract_fingerprint"), "-d", "901", "-np", "1", env=env)
    run(str(bin_dir / "nnUNetv2_plan_experiment"), "-d", "901", env=env)
    shrink_plans(work / "preprocessed" / DATASET / "nnUNetPlans.json")
    run(str(bin_dir / "nnUNetv2_preprocess"), "-d", "901", "-c", "3d_fullres", "-np", "1", env=env)
    # augmentation in the training process (two cores, no worker pool); planning needs it positive
    env["nnUNet_n_proc_DA"] = "0"
    run(sys.executable, __file__, "--train", env=env)
    trained = work / "results" / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth"):
        shutil.copyfile(trained / name, OUT / name)
    print(f"wrote {OUT}")


def train() -> None:
    """What `nnUNetv2_train 901 3d_fullres 0 -device cpu` does, with EPOCHS epochs instead of 1000.

    Not `nnUNetv2_train -tr nnUNetTrainer_5epochs`: nnU-Net finds a trainer class by importing every module
    under nnunetv2/training/nnUNetTrainer/ until one has it, the variants come after primus/, and primus imports
    timm, which imports torchvision; a torchvision built for another torch (a CUDA wheel beside a CPU torch) fails
    to import ("operator torchvision::nms does not exist"), so no variant trainer can be found, here or by the
    predictor serving its checkpoint. The plain nnUNetTrainer is found first, in nnUNetTrainer.py, and the
    checkpoint names it, as most published nnU-Net models do.
    """
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args("901", "3d_fullres", 0, "nnUNetTrainer", device=torch.device("cpu"))
    trainer.num_epochs = EPOCHS
    trainer.run_training()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)  # the training step, in its env
    args = parser.parse_args()
    if args.train:
        train()
    elif args.keep:
        args.keep.mkdir(parents=True)
        make(args.keep)
    else:
        with tempfile.TemporaryDirectory() as work:
            make(Path(work))


if __name__ == "__main__":
    main()
