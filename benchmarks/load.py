"""Load benchmark on loopback: the threshold example under concurrent predictions, the registry under mixed calls.

Prints errors, throughput, latency percentiles and the server's memory growth;
exits non-zero when a request failed or memory grew more than 10% after warm-up.
Usage: python -m benchmarks.load [--quick]
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
import SimpleITK as sitk

from .support import ROOT, free_port, start, status_kib, stop


def percentiles(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


def volume_field() -> str:
    array = np.zeros((32, 64, 64), dtype=np.int16)
    array[8:24, 16:48, 16:48] = 600
    image = sitk.GetImageFromArray(array)
    folder = tempfile.mkdtemp(prefix="bench-")
    path = os.path.join(folder, "v.mha")
    sitk.WriteImage(image, path)
    with open(path, "rb") as handle:
        data = handle.read()
    os.remove(path)
    os.rmdir(folder)
    return base64.encodebytes(data).decode("ascii")


def bench_predictions(total: int, clients: int, env: dict) -> bool:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tomaat", "serve", "examples/threshold.py", "--no-tls"]
    command += ["--listen-address", "127.0.0.1", "--port", str(port), "--threads", "8"]
    server = start(command, url, env)
    fields = {"images": (None, volume_field()), "threshold": (None, "300")}
    errors, latencies, warm = 0, [], min(50, total // 5)

    def one(_):
        start_at = time.perf_counter()
        try:
            ok = requests.post(url + "/predict", files=fields, timeout=60).status_code == 200
        except requests.RequestException:
            ok = False
        return ok, time.perf_counter() - start_at

    try:
        began = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for ok, latency in pool.map(one, range(warm)):
                errors += not ok
                latencies.append(latency)
            after_warm = status_kib(server.pid, "VmRSS") / 1024
            for ok, latency in pool.map(one, range(total - warm)):
                errors += not ok
                latencies.append(latency)
        elapsed = time.perf_counter() - began
        after_all = status_kib(server.pid, "VmRSS") / 1024
    finally:
        stop(server)
    bound = after_warm * 1.10
    print(
        f"predict: {total} requests, {clients} clients, {errors} errors, {total / elapsed:.1f} req/s, {percentiles(latencies)}"
    )
    print(
        f"predict: server RSS after {warm}: {after_warm:.1f} MiB, after {total}: {after_all:.1f} MiB, bound (+10%): {bound:.1f} MiB"
    )
    return errors == 0 and after_all <= bound


def bench_registry(total: int, concurrency: int, env: dict, folder: str) -> bool:
    from tomaat.registry import store
    from tomaat.registry.keys import generate_key, hash_key

    database = os.path.join(folder, "registry.sqlite3")
    opened = store.SyncStore(database)
    opened.run(store.create_schema)
    key = generate_key()
    opened.run(store.add_key, hash_key(key), "benchmark", time.time())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tomaat.registry.cli", "serve", "--no-tls", "--listen-address", "127.0.0.1"]
    command += ["--port", str(port), "--db", database]
    registry = start(command, url, env)
    random.seed(6)
    calls = ["announce" if random.random() < 0.5 else "discover" for _ in range(total)]
    errors, latencies = 0, []

    def one(index_call):
        index, call = index_call
        start_at = time.perf_counter()
        try:
            if call == "announce":
                body = {
                    "api_key": key,
                    "prediction_url": f"http://10.0.0.{index % 50}:9000/predict",
                    "interface_url": f"http://10.0.0.{index % 50}:9000/interface",
                    "name": f"service {index % 50}",
                    "modality": "MRI",
                    "anatomy": "prostate",
                    "task": "segmentation",
                    "description": "load benchmark",
                }
                ok = requests.post(url + "/announce", json=body, timeout=30).status_code == 200
            else:
                ok = requests.get(url + "/discover", params={"modality": "MRI"}, timeout=30).status_code == 200
        except requests.RequestException:
            ok = False
        return ok, time.perf_counter() - start_at

    try:
        began = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for ok, latency in pool.map(one, enumerate(calls)):
                errors += not ok
                latencies.append(latency)
        elapsed = time.perf_counter() - began
    finally:
        stop(registry)
    print(
        f"registry: {total} mixed announce/discover calls, concurrency {concurrency}, {errors} errors, "
        f"{total / elapsed:.1f} calls/s, {percentiles(latencies)}"
    )
    return errors == 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run for CI (100 predictions, 400 registry calls)")
    args = parser.parse_args(argv)
    predictions, clients, calls, concurrency = (100, 8, 400, 16) if args.quick else (500, 16, 5000, 32)
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        env = {**os.environ, "TMPDIR": folder, "PYTHONPATH": ROOT}
        ok = bench_predictions(predictions, clients, env)
        ok = bench_registry(calls, concurrency, env, folder) and ok
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
