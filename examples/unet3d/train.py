"""Train the Keras U-Net on synthetic phantoms (a few minutes on two CPU cores): `python examples/unet3d/train.py`.

Volumes go through the app's own pre-processing, so the network learns on
exactly what it will be served; it trains on random 32^3 crops with flips.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import keras  # noqa: E402
from model import SPACING, WINDOW, keras_unet  # noqa: E402
from phantoms import make_phantom  # noqa: E402

from tomaat.processing import Cast, Compose, Reorient, Resample, ZScore  # noqa: E402


def prepared(seed: int, count: int):
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    image_steps = Compose(Cast(sitk.sitkFloat32), Reorient(), Resample(SPACING), ZScore())
    label_steps = Compose(Reorient(), Resample(SPACING, sitk.sitkNearestNeighbor))
    images, labels = [], []
    for _ in range(count):
        image, truth = make_phantom(rng)
        images.append(sitk.GetArrayFromImage(image_steps({"images": image})["images"]))
        labels.append(sitk.GetArrayFromImage(label_steps({"images": truth})["images"]).astype(np.float32))
    return images, labels


def crops(images, labels, rng, batch: int):
    while True:
        xs, ys = [], []
        for _ in range(batch):
            i = rng.integers(len(images))
            image, label = images[i], labels[i]
            pads = [(0, max(0, w - n)) for n, w in zip(image.shape, WINDOW, strict=True)]
            image, label = np.pad(image, pads), np.pad(label, pads)
            start = [rng.integers(0, n - w + 1) for n, w in zip(image.shape, WINDOW, strict=True)]
            region = tuple(slice(s, s + w) for s, w in zip(start, WINDOW, strict=True))
            x, y = image[region], label[region]
            for axis in range(3):
                if rng.random() < 0.5:
                    x, y = np.flip(x, axis), np.flip(y, axis)
            xs.append(x[..., None])
            ys.append(y[..., None])
        yield np.stack(xs), np.stack(ys)


def dice_loss(y_true, y_pred):
    from keras import ops

    intersection = ops.sum(y_true * y_pred)
    soft_dice = (2 * intersection + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) + 1.0)
    return 1.0 - soft_dice + keras.losses.binary_crossentropy(y_true, y_pred)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--volumes", type=int, default=160)
    parser.add_argument("--steps", type=int, default=1500)  # what trained the committed model
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default=os.path.join(HERE, "unet3d.keras"))
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    images, labels = prepared(seed=0, count=args.volumes)  # evaluate.py uses other seeds
    print(f"{len(images)} phantoms prepared in {time.perf_counter() - started:.0f} s", flush=True)
    model = keras_unet()
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, args.steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=dice_loss)
    per_epoch = 100
    model.fit(
        crops(images, labels, np.random.default_rng(1), args.batch),
        steps_per_epoch=per_epoch,
        epochs=max(1, args.steps // per_epoch),
        verbose=2,
    )
    model.save(args.out)
    print(f"trained in {time.perf_counter() - started:.0f} s; saved {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
