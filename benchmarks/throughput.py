"""Throughput benchmark on loopback: 8 concurrent clients against an app bound by its GPU lock, over HTTP and HTTPS.

The app (benchmarks/gpu_bound_app.py) holds the lock 200 ms per request, so
no server can answer more than 5 requests/s; preprocess and postprocess add
100 ms of CPU each, which a server must overlap with other requests'
inference to come near that bound.

Two servers of the app run side by side, one plain HTTP and one HTTPS (a
self-signed certificate, not verified by the clients). Each client opens a
new connection per request, as a v1 client does, so every HTTPS request pays
a handshake. The requests go in rounds of 16, HTTP and HTTPS alternating
(never both servers at once: on 2 cores one would steal the other's CPU), so
that both rows, and their HTTPS/HTTP ratio, come from the same minutes of a
noisy machine.
Usage: python -m benchmarks.throughput [--quick] [--requests N]
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
ROUND = 2 * CLIENTS  # requests per round: long enough that the pipeline's fill and drain are a small part
SCHEMES = ("http", "https")


def small_volume(folder: str) -> str:
    path = os.path.join(folder, "small.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 32, 32), np.int16)), path)
    with open(path, "rb") as handle:
        data = handle.read()
    os.remove(path)
    return base64.encodebytes(data).decode("ascii")


def rounds(total: int) -> list[tuple[str, int]]:
    """(scheme, requests) in the order they run: both schemes get `total`, alternating, HTTP first."""
    sizes = [ROUND] * (total // ROUND) + ([total % ROUND] if total % ROUND else [])
    return [(scheme, size) for size in sizes for scheme in SCHEMES]


def measure(urls: dict, total: int, fields: dict) -> dict:
    """{scheme: (outcomes [(ok, seconds)], seconds of its rounds together)}."""

    def one(url: str) -> tuple[bool, float]:
        began = time.perf_counter()
        ok = requests.post(url + "/predict", files=fields, timeout=120, verify=False).status_code == 200
        return ok, time.perf_counter() - began

    for url in urls.values():
        one(url)  # warm-up: the app's first call
    results = {scheme: ([], 0.0) for scheme in urls}
    with ThreadPoolExecutor(CLIENTS) as pool:
        for scheme, size in rounds(total):
            began = time.perf_counter()
            outcomes = list(pool.map(one, [urls[scheme]] * size))
            elapsed = time.perf_counter() - began
            done, seconds = results[scheme]
            results[scheme] = (done + outcomes, seconds + elapsed)
    return results


def report(total: int, results: dict) -> int:
    """Print the table; the number of failed requests."""
    errors = {scheme: sum(not ok for ok, _ in outcomes) for scheme, (outcomes, _) in results.items()}
    rate = {scheme: len(outcomes) / seconds for scheme, (outcomes, seconds) in results.items()}
    latency = {scheme: median_ms([t for _, t in outcomes]) for scheme, (outcomes, _) in results.items()}
    bound = 1 / GPU_SECONDS
    print(
        f"throughput: {total} requests per scheme, {CLIENTS} clients, {sum(errors.values())} errors, "
        f"HTTP and HTTPS in alternate rounds of up to {ROUND}"
    )
    print(f"{'GPU-bound maximum':<12}{bound:>11.2f} requests/s")
    print(f"{'scheme':<12}{'requests/s':>11}{'of maximum':>12}{'median latency ms':>19}{'errors':>8}")
    for scheme in results:
        print(
            f"{scheme.upper():<12}{rate[scheme]:>11.2f}{rate[scheme] / bound:>12.0%}"
            f"{latency[scheme]:>19.1f}{errors[scheme]:>8}"
        )
    print(f"{'HTTPS/HTTP':<12}{rate['https'] / rate['http']:>11.2f}{'':>12}{latency['https'] / latency['http']:>19.2f}")
    return sum(errors.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run for CI (16 requests per scheme)")
    parser.add_argument("--requests", type=int, default=80, help="requests per scheme (default 80)")
    args = parser.parse_args(argv)
    total = 16 if args.quick else args.requests
    if total < 1:
        parser.error(f"--requests must be at least 1, got {total}")
    from tomaat.net.tls import ensure_certificate

    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        env = {**os.environ, "TMPDIR": folder, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__)) or "."}
        cert = ensure_certificate(folder, "127.0.0.1")
        fields = {"images": (None, small_volume(folder)), "threshold": (None, "1")}
        servers, urls = [], {}
        try:
            for scheme in SCHEMES:
                port = free_port()
                urls[scheme] = f"{scheme}://127.0.0.1:{port}"
                app = "benchmarks/gpu_bound_app.py"
                servers.append(start(tomaat_serve(app, port, cert if scheme == "https" else None), urls[scheme], env))
            results = measure(urls, total, fields)
        finally:
            for server in servers:
                stop(server)
    errors = report(total, results)
    print("OK" if errors == 0 else "FAILED")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
