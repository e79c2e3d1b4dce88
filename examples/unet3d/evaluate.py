"""Dice of the served pipeline on 20 held-out phantoms: `python examples/unet3d/evaluate.py [--framework torch]`.

Runs the app's three steps directly (what the server runs), on phantoms from
seeds training never used, and scores on each phantom's own grid.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from app import UNetApp  # noqa: E402
from phantoms import dice, make_phantom  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--framework", default="keras", choices=["keras", "torch"])
    args = parser.parse_args()
    app = UNetApp(args.framework)
    rng = np.random.default_rng(12345)  # training used seed 0
    scores, started = [], time.perf_counter()
    for _ in range(args.count):
        image, truth = make_phantom(rng)
        scores.append(dice(app({"images": image})["labels"], truth))
    elapsed = time.perf_counter() - started
    print(
        f"{args.framework}: Dice on {args.count} held-out phantoms: mean {np.mean(scores):.4f}, "
        f"min {np.min(scores):.4f}, median {np.median(scores):.4f} ({elapsed / args.count:.2f} s per volume)"
    )


if __name__ == "__main__":
    main()
