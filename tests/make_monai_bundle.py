"""Make tests/monai_bundle: a tiny MONAI bundle, laid out and configured as the MONAI model zoo's are.

`monai.bundle.init_bundle` writes the folder (configs/metadata.json, configs/inference.json,
models/model.pt, docs/README.md, LICENSE) and `monai.bundle.verify_net_in_out` checks the
network against the metadata's input and output shapes. The network is a small 3D UNet
(3 classes: background, core, rim) trained for a few Adam steps on synthetic spheres with a
fixed seed, so that its labels are not all one class; it is deterministic on CPU.
The inference config is the model zoo's: LoadImaged, EnsureChannelFirstd, Orientationd,
Spacingd, ScaleIntensityd, a SlidingWindowInferer, Activationsd, Invertd, AsDiscreted and
SaveImaged, run by a SupervisedEvaluator with a CheckpointLoader handler.

Run: .venv/bin/python tests/make_monai_bundle.py [FOLDER]  (default tests/monai_bundle; it must not exist)
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from monai.bundle import init_bundle, verify_net_in_out
from monai.networks.nets import UNet

HERE = os.path.dirname(os.path.abspath(__file__))
ROI = 32
NETWORK = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
}

METADATA = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
    "version": "0.1.0",
    "changelog": {"0.1.0": "a tiny test bundle for tomaat"},
    "monai_version": "1.6.1",
    "pytorch_version": "2.13.0",
    "numpy_version": "2.4.6",
    "required_packages_version": {"nibabel": "5.4.2"},
    "name": "Sphere core and rim (test bundle)",
    "task": "Segmentation of a bright sphere into core and rim",
    "description": "A tiny 3D UNet trained for a few steps on synthetic spheres; made by tests/make_monai_bundle.py.",
    "authors": "tomaat tests",
    "copyright": "Copyright (c) tomaat authors",
    "license": "Apache-2.0",
    "intended_use": "Testing only: checks that a MONAI bundle is served as MONAI runs it. Not for any diagnosis.",
    "references": ["Cardoso et al., MONAI: An open-source framework for deep learning in healthcare, 2022"],
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "MR",
                "num_channels": 1,
                "spatial_shape": [ROI, ROI, ROI],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {"0": "image"},
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "segmentation",
                "num_channels": 3,
                "spatial_shape": [ROI, ROI, ROI],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {"0": "background", "1": "sphere core", "2": "sphere rim"},
            }
        },
    },
}

INFERENCE = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/workspace/data",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": NETWORK,
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 1.5], "mode": "bilinear"},
            {"_target_": "ScaleIntensityd", "keys": "image"},
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": "@dataset",
        "batch_size": 1,
        "shuffle": False,
        "num_workers": 0,
    },
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [ROI, ROI, ROI], "sw_batch_size": 2, "overlap": 0.25},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": False,
                "to_tensor": True,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@output_dir",
                "output_postfix": "seg",
                "separate_folder": False,
                "resample": False,
            },
        ],
    },
    "handlers": [
        {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
        }
    ],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
        "amp": False,
    },
    "initialize": ["$monai.utils.set_determinism(seed=123)"],
    "run": ["$@evaluator.run()"],
}

README = """# Sphere core and rim (test bundle)

A tiny 3D UNet (3 classes: background, sphere core, sphere rim) trained for a few steps on synthetic
spheres, made by tests/make_monai_bundle.py for tomaat's tests. Not for any real use.

Run with MONAI (its evaluator needs pytorch-ignite):

    python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
        --bundle_root . --dataset_dir FOLDER_OF_NIFTI_FILES --output_dir OUT

Serve with tomaat: `tomaat serve --bundle tests/monai_bundle`.
"""


def spheres(rng: np.random.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy bright spheres in [0, 1], labelled 1 inside 60% of the radius and 2 in the shell around it."""
    grid = np.stack(np.meshgrid(*[np.arange(ROI)] * 3, indexing="ij")).astype(np.float32)
    images, labels = [], []
    for _ in range(count):
        centre = rng.uniform(10, ROI - 10, size=3)
        radius = rng.uniform(5, 9)
        distance = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
        label = np.where(distance < 0.6 * radius, 1, np.where(distance < radius, 2, 0))
        image = np.where(label == 1, 0.9, np.where(label == 2, 0.5, 0.1)) + rng.normal(0, 0.05, label.shape)
        images.append(np.clip(image, 0, 1)[None])
        labels.append(label)
    return torch.tensor(np.stack(images), dtype=torch.float32), torch.tensor(np.stack(labels))


def train(steps: int = 200) -> torch.nn.Module:
    torch.manual_seed(26)
    rng = np.random.default_rng(26)
    kwargs = {k: v for k, v in NETWORK.items() if k != "_target_"}
    net = UNet(**kwargs)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(steps):
        images, labels = spheres(rng, 4)
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 20 == 19:
            print(f"step {step + 1}: loss {loss.item():.3f}")
    return net.eval()


def main(folder: str) -> None:
    net = train()
    init_bundle(folder, network=net, metadata_str=METADATA, inference_str=INFERENCE)
    with open(os.path.join(folder, "docs", "README.md"), "w") as handle:
        handle.write(README)
    with open(os.path.join(folder, "LICENSE"), "w") as handle:
        handle.write("Apache-2.0: the weights of this test bundle were made by tests/make_monai_bundle.py.\n")
    verify_net_in_out(
        net_id="network_def",
        meta_file=os.path.join(folder, "configs", "metadata.json"),
        config_file=os.path.join(folder, "configs", "inference.json"),
        device="cpu",
    )
    print(f"wrote {folder}")


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "monai_bundle")))
