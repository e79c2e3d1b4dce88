"""deepbet brain extraction through the server against deepbet alone: what serving adds to a real network.

Starts `tomaat serve examples/brain_extraction.py --device DEVICE` and times requests as a v2
client sends them (the NIfTI file uploaded, the answer read whole), against deepbet's own
`BrainExtraction.run` on the same file in this process (networks already loaded, mask written
to disk). Both are warmed once first (TorchScript optimises on its first runs; not in --quick),
and the medians are compared. Goal: the server adds at most 10% or 0.5 s, whichever is larger. Also checks that the
served mask equals deepbet's voxel for voxel.
Usage: python -m benchmarks.brain_extraction [--image T1.nii.gz] [--repeat N] [--device cpu|cuda] [--quick]
Default image: the MNI152 template in shared/data (not in the repository); --quick: a small
generated head (examples/brain_extraction.py's synthetic_head), one cold run each, for CI.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import requests
import SimpleITK as sitk

from benchmarks.support import ROOT, free_port, start, stop, tomaat_serve

APP = "examples/brain_extraction.py"
TEMPLATE = ("shared/data/mni152_t1.nii.gz", "/work/shared/data/mni152_t1.nii.gz")


def served(path: str, device: str, repeat: int, warm: int, folder: str) -> tuple[list[float], np.ndarray]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start(tomaat_serve(APP, port, None, ["--device", device]), url, dict(os.environ))
    times = []
    try:
        for _ in range(warm + repeat):
            with open(path, "rb") as handle:
                files = {"images": (os.path.basename(path), handle.read(), "application/octet-stream")}
            began = time.perf_counter()
            answer = requests.post(url + "/predict", files=files, timeout=600)
            times.append(time.perf_counter() - began)
            if answer.status_code != 200:
                raise RuntimeError(f"the server answered {answer.status_code}: {answer.text[:200]}")
    finally:
        stop(process)
    [labels] = [item for item in answer.json() if item.get("type") == "LabelVolume"]
    mask_path = os.path.join(folder, "served.mha")  # our own server's answer: compressed MHA (docs/protocol.md)
    with open(mask_path, "wb") as handle:
        handle.write(base64.b64decode(labels["content"]))
    return times[warm:], sitk.GetArrayFromImage(sitk.ReadImage(mask_path))


def alone(path: str, device: str, repeat: int, warm: int, folder: str) -> tuple[list[float], np.ndarray]:
    from deepbet.bet import BrainExtraction

    bet = BrainExtraction(no_gpu=device == "cpu")
    mask_path = os.path.join(folder, "deepbet.nii.gz")
    times = []
    for _ in range(warm + repeat):
        began = time.perf_counter()
        bet.run(path, mask_path=mask_path)
        times.append(time.perf_counter() - began)
    return times[warm:], sitk.GetArrayFromImage(sitk.ReadImage(mask_path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="a T1 NIfTI file (default: the MNI152 template in shared/data)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="a small generated head, one run each, for CI")
    args = parser.parse_args(argv)
    repeat, warm = (1, 0) if args.quick else (args.repeat, 1)  # the warm-up run: TorchScript optimises on first runs
    with tempfile.TemporaryDirectory() as folder:
        path = args.image
        if args.quick and path is None:
            sys.path.insert(0, os.path.join(ROOT, "examples"))
            from brain_extraction import synthetic_head

            path = os.path.join(folder, "head.nii")
            synthetic_head(path)
        elif path is None:
            found = [os.path.join(ROOT, each) for each in TEMPLATE if os.path.exists(os.path.join(ROOT, each))]
            if not found:
                print(f"no --image given and no MNI152 template at {' or '.join(TEMPLATE)}", file=sys.stderr)
                return 2
            path = found[0]
        size = sitk.ReadImage(path).GetSize()
        print(f"deepbet brain extraction on {os.path.basename(path)} {size}, device {args.device}, {repeat} run(s)")
        alone_times, expected = alone(path, args.device, repeat, warm, folder)
        served_times, mask = served(path, args.device, repeat, warm, folder)
    by_itself, through = statistics.median(alone_times), statistics.median(served_times)
    added = through - by_itself
    allowed = max(0.10 * by_itself, 0.5)
    print(f"{'deepbet alone':>22}: {by_itself:7.2f} s  ({', '.join(f'{t:.2f}' for t in alone_times)})")
    print(f"{'through the server':>22}: {through:7.2f} s  ({', '.join(f'{t:.2f}' for t in served_times)})")
    print(f"{'the server adds':>22}: {added:7.2f} s  ({100 * added / by_itself:.1f}%; goal <= {allowed:.2f} s)")
    if not np.array_equal(mask, expected):
        print(f"the served mask differs from deepbet's in {int((mask != expected).sum())} voxels")
        return 1
    print(f"masks equal voxel for voxel ({int(mask.sum())} brain voxels)")
    if added > allowed and not args.quick:  # a quick run on a busy CI machine times too little to judge
        print("goal missed")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
