"""Ray Serve replicas on loopback: what going through Ray costs a large volume, and what a second replica buys.

1. Added latency: a 256^3 float32 volume (64 MiB) through examples/threshold.py, served in this process's
   worker threads and served with `--ray --replicas 1` (a local Ray instance); the median of the runs each.
2. Replicas: 8 concurrent clients against an app whose inference holds its replica's GPU lock for 200 ms
   (a sleep, as a network on an accelerator leaves the CPU idle) with light pre- and postprocessing; the
   throughput of `--replicas 2` against `--replicas 1` (goal: at least 1.8x).

    .venv/bin/python -m benchmarks.replicas            # 256^3, 5 runs; 80 requests per replica count
    .venv/bin/python -m benchmarks.replicas --quick    # 32^3, 2 runs; 16 requests: proves it runs (CI)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
import SimpleITK as sitk

from benchmarks.support import free_port, start, stop, tomaat_serve

CLIENTS = 8
GPU_SECONDS = 0.2
GPU_APP = f"""
import time
import threading

from tomaat import PlainText, TomaatApp, Volume


class Sleeper(TomaatApp):
    name = "GPU-bound"
    input_interface = [Volume("images")]
    output_interface = [PlainText("done")]

    def inference(self, data):
        time.sleep({GPU_SECONDS})  # the replica's GPU lock is held around this
        data["done"] = "ok"
        return data
"""


def volume_bytes(n: int, folder: str) -> bytes:
    rng = np.random.default_rng(n)
    image = sitk.GetImageFromArray(rng.normal(0, 300, (n, n, n)).astype(np.float32))
    image.SetSpacing((0.8, 0.8, 1.5))
    image.SetOrigin((-100.0, 20.0, 300.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    path = os.path.join(folder, "volume.mha")
    sitk.WriteImage(image, path)
    with open(path, "rb") as handle:
        data = handle.read()
    os.remove(path)
    return data


def serve(app: str, folder: str, extra: list[str]):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TMPDIR": folder}
    process = start(tomaat_serve(app, port, None, extra), url, env, os.path.join(folder, f"serve-{port}.log"))
    deadline = time.monotonic() + 120
    while extra and time.monotonic() < deadline:  # on Ray: until the replicas run, not only the port
        steps = requests.get(url + "/health", timeout=5).json()["steps"]
        if steps["replicas"]["running"] >= steps["wanted"]:
            break
        time.sleep(0.2)
    return process, url


def latency(url: str, data: bytes, runs: int) -> float:
    times = []
    for _ in range(runs + 1):  # the first warms the decoders and replicas
        began = time.perf_counter()
        answer = requests.post(
            url + "/predict", files={"images": ("v.mha", data)}, data={"threshold": "100"}, timeout=300
        )
        answer.raise_for_status()
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:])


def throughput(url: str, data: bytes, requests_total: int) -> tuple[float, int]:
    def one(_):
        try:
            return requests.post(url + "/predict", files={"images": ("v.mha", data)}, timeout=300).status_code
        except requests.RequestException:
            return 0

    one(0)
    began = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = list(pool.map(one, range(requests_total)))
    return requests_total / (time.perf_counter() - began), sum(status != 200 for status in statuses)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and short: only proves the benchmark runs")
    args = parser.parse_args(argv)
    size, runs, total = (32, 2, 16) if args.quick else (256, 5, 80)
    folder = tempfile.mkdtemp(prefix="tomaat-replicas-bench-")
    ray = ["--ray", "--ray-cpus", "2"]
    data = volume_bytes(size, folder)
    print(f"1. added latency, {size}^3 float32 ({len(data) / 2**20:.0f} MiB), examples/threshold.py, median of {runs}")
    measured = {}
    for label, extra in (("in-process", []), ("--ray --replicas 1", [*ray, "--replicas", "1"])):
        process, url = serve("examples/threshold.py", folder, extra)
        try:
            measured[label] = latency(url, data, runs)
        finally:
            stop(process)
        print(f"   {label:<22} {measured[label] * 1000:8.0f} ms")
    print(f"   added by Ray            {(measured['--ray --replicas 1'] - measured['in-process']) * 1000:8.0f} ms")

    app = os.path.join(folder, "gpu_bound.py")
    with open(app, "w") as handle:
        handle.write(textwrap.dedent(GPU_APP))
    small = volume_bytes(16, folder)
    print(
        f"2. replicas: {CLIENTS} clients, {total} requests, inference {GPU_SECONDS * 1000:.0f} ms under each replica's lock"
    )
    rates = {}
    for replicas in (1, 2):
        process, url = serve(app, folder, [*ray, "--replicas", str(replicas)])
        try:
            rates[replicas], errors = throughput(url, small, total)
        finally:
            stop(process)
        print(
            f"   --replicas {replicas}   {rates[replicas]:6.2f} requests/s  ({errors} errors; bound {replicas / GPU_SECONDS:.0f}/s)"
        )
        if errors:
            return 1
    shutil.rmtree(folder, ignore_errors=True)
    print(f"   2 replicas / 1 replica: {rates[2] / rates[1]:.2f}x (goal: at least 1.8x)")
    print("(2 cores, CPU only; a local Ray instance started by each front end)")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
