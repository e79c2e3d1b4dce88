"""Throughput benchmark on loopback: 8 concurrent clients against an app bound by its GPU lock.

The app (benchmarks/gpu_bound_app.py) holds the lock 200 ms per request, so
no server can answer more than 5 requests/s; preprocess and postprocess add
100 ms of CPU each, which a server must overlap with other requests'
inference to come near that bound.
Usage: python -m benchmarks.throughput [--quick]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
import SimpleITK as sitk

from benchmarks.gpu_bound_app import GPU_SECONDS
from benchmarks.support import free_port, median_ms, start, stop, tomaat_serve

CLIENTS = 8


def small_volume(folder: str) -> str:
    path = os.path.join(folder, "small.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 32, 32), np.int16)), path)
    with open(path, "rb") as handle:
        data = handle.read()
    os.remove(path)
    return base64.encodebytes(data).decode("ascii")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run for CI (16 requests)")
    parser.add_argument("--requests", type=int, default=80, help="requests in all (default 80)")
    args = parser.parse_args(argv)
    total = 16 if args.quick else args.requests
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        env = {**os.environ, "TMPDIR": folder, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__)) or "."}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start(tomaat_serve("benchmarks/gpu_bound_app.py", port, None), url, env)
        fields = {"images": (None, small_volume(folder)), "threshold": (None, "1")}

        def one(_):
            began = time.perf_counter()
            ok = requests.post(url + "/predict", files=fields, timeout=120).status_code == 200
            return ok, time.perf_counter() - began

        try:
            one(0)  # warm-up: the app's first call
            began = time.perf_counter()
            with ThreadPoolExecutor(CLIENTS) as pool:
                outcomes = list(pool.map(one, range(total)))
            elapsed = time.perf_counter() - began
        finally:
            stop(server)
    errors = sum(not ok for ok, _ in outcomes)
    rate, bound = total / elapsed, 1 / GPU_SECONDS
    print(f"throughput: {total} requests, {CLIENTS} clients, {errors} errors, {elapsed:.2f} s")
    print(f"{'requests/s':<24}{rate:>8.2f}")
    print(f"{'GPU-bound maximum':<24}{bound:>8.2f}")
    print(f"{'fraction of maximum':<24}{rate / bound:>8.0%}")
    print(f"{'median latency ms':<24}{median_ms([t for _, t in outcomes]):>8.1f}")
    print("OK" if errors == 0 else "FAILED")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
