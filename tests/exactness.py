"""Sends many different volumes to a running server by one way of travelling, and compares every answer,
voxel for voxel and on its grid, with what the app computes in this process on the same file.

Run by tests/test_exactness.py as a subprocess (the blocking client runs its own reactor, which a
pytest-twisted process cannot host), and by hand against any server of `exact_app.py`:

    python tests/exactness.py URL --path binary --clients 8 --requests 200

Each request has its own volume: size, pixel type, spacing, origin, direction (a random rotation, often
with a flip) and file format (MHA, NIfTI, NRRD, written by SimpleITK) drawn from its own seed, and its
own thresholds. Prints one JSON line: how many answers were compared and what was wrong with any.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import threading

import numpy as np
import requests
import SimpleITK as sitk

HERE = os.path.dirname(os.path.abspath(__file__))
PIXELS = (np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64)
FORMATS = {"mha": ("MetaImageIO", ".mha"), "nii.gz": ("NiftiImageIO", ".nii.gz"), "nrrd": ("NrrdImageIO", ".nrrd")}
PATHS = ("json", "binary", "v1", "stored", "compressed", "delayed")


def volume(seed: int) -> tuple[sitk.Image, float, float, str]:
    """A volume nobody could mistake for another: its own size, pixel type and grid; two thresholds; a format."""
    rng = np.random.default_rng(seed)
    pixel = PIXELS[seed % len(PIXELS)]
    size = tuple(int(n) for n in rng.integers(5, 33, 3))  # z, y, x
    if np.issubdtype(pixel, np.integer):
        info = np.iinfo(pixel)
        low, high = max(info.min, -3000), min(info.max, 3000)
        array = rng.integers(low, high, size, endpoint=True).astype(pixel)
    else:
        low, high = -3000.0, 3000.0
        array = rng.uniform(low, high, size).astype(pixel)
    image = sitk.GetImageFromArray(array)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    image.SetDirection(rotation.ravel().tolist())  # a rotation, a flip (det -1) about half the time
    image.SetSpacing(rng.uniform(0.3, 3.0, 3).tolist())
    image.SetOrigin(rng.uniform(-250, 250, 3).tolist())
    first, second = sorted(rng.uniform(low, high, 2).tolist())
    return image, round(first, 3), round(second, 3), list(FORMATS)[seed // len(PIXELS) % len(FORMATS)]


def on_disk(image: sitk.Image, fmt: str, folder: str, seed: int) -> tuple[str, sitk.Image]:
    """The file as SimpleITK writes it, and SimpleITK's own reading of it: what the app gets in-process."""
    io, suffix = FORMATS[fmt]
    path = os.path.join(folder, f"volume-{seed}{suffix}")
    sitk.WriteImage(image, path, useCompression=fmt != "mha")
    return path, sitk.ReadImage(path, imageIO=io)


def in_process(app, image: sitk.Image, low: float, high: float) -> dict:
    return app({"images": image, "low": low, "high": high})


def difference(got: sitk.Image, summary: str, expected: dict) -> str | None:
    """What differs between an answer and the in-process result, or None."""
    want = expected["labels"]
    if got.GetSize() != want.GetSize():
        return f"size {got.GetSize()} != {want.GetSize()}"
    for what in ("Spacing", "Origin", "Direction"):
        a, b = getattr(got, "Get" + what)(), getattr(want, "Get" + what)()
        if not np.array_equal(a, b):
            return f"{what.lower()} {a} != {b}"
    if got.GetPixelID() != want.GetPixelID():
        return f"pixel type {got.GetPixelIDTypeAsString()} != {want.GetPixelIDTypeAsString()}"
    wrong = np.argwhere(sitk.GetArrayViewFromImage(got) != sitk.GetArrayViewFromImage(want))
    if len(wrong):
        return f"{len(wrong)} wrong voxels, first at {wrong[0].tolist()}"
    if summary != expected["summary"]:
        return f"summary {summary!r} != {expected['summary']!r}"
    return None


def _label_of(item: dict) -> sitk.Image:
    from tomaat.protocol.outputs import decode_item

    return decode_item(item)


def _raw(url: str, path: str, fmt: str, low: float, high: float, v1: bool) -> tuple[sitk.Image, str]:
    """A request as other clients build it: the file as a part (v2), or as TOMAAT-Slicer does (v1: base64
    MHA text in a form field); the answer as JSON."""
    form = {"low": str(low), "high": str(high)}
    if v1:
        image = sitk.ReadImage(path)
        with tempfile.TemporaryDirectory() as folder:
            mha = os.path.join(folder, "v1.mha")
            sitk.WriteImage(image, mha)  # Slicer's module writes its volume with ITK as MHA
            with open(mha, "rb") as handle:
                form["images"] = base64.encodebytes(handle.read()).decode("ascii")
        response = requests.post(url + "/predict", data=form, timeout=300)
    else:
        with open(path, "rb") as handle:
            files = {"images": (os.path.basename(path), handle.read())}
        response = requests.post(url + "/predict", files=files, data=form, timeout=300)
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    items = {item["type"]: item for item in response.json()}
    return _label_of(items["LabelVolume"]), items["PlainText"]["content"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--path", choices=PATHS, required=True)
    parser.add_argument("--app", default=os.path.join(HERE, "exact_app.py"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from tomaat.client import Client
    from tomaat.server.loader import load

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # NIfTI keys MetaIO won't write, when v1 sends them as MHA
    app = load(args.app + ":Exact")
    report: dict = {"path": args.path, "compared": 0, "wrong": []}
    lock = threading.Lock()
    folder = tempfile.mkdtemp(prefix="exactness-")
    plain = {"json": False, "v1": True}

    def client_thread(number: int) -> None:
        client = None
        if args.path not in plain:
            client = Client(args.url, compress=args.path == "compressed", reuse=args.path == "stored", timeout=120)
        for seed in range(args.seed + number, args.seed + args.requests, args.clients):
            image, low, high, fmt = volume(seed)
            path, read_back = on_disk(image, fmt, folder, seed)
            runs = [(low, high), (high, low)] if args.path == "stored" else [(low, high)]  # stored: used twice
            for first, second in runs:
                expected = in_process(app, read_back, first, second)
                try:
                    if client is None:
                        got, summary = _raw(args.url, path, fmt, first, second, plain[args.path])
                    else:
                        result = client.predict(images=path, low=first, high=second)
                        got, summary = result["labels"], result["summary"]
                    problem = difference(got, summary, expected)
                except Exception as error:  # noqa: BLE001 - every failure is reported, not only the first
                    problem = f"{type(error).__name__}: {error}"
                with lock:
                    report["compared"] += 1
                    if problem:
                        report["wrong"].append({"seed": seed, "format": fmt, "problem": problem})
        if client is not None:
            client.close()

    threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)
    print(json.dumps(report))
    return 0 if not report["wrong"] else 1


if __name__ == "__main__":
    sys.exit(main())
