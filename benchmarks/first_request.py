"""A newly started server's first request against its tenth: what a clinician's first scan of the day costs.

For each of several fresh `tomaat serve examples/threshold.py` processes, times ten requests in a row (the
demo's 64x64x48 NIfTI phantom, `requests` as a v2 client sends the file, a new connection each time, the
answer read whole) and prints the first, the tenth and their ratio; the target is first <= 1.2x tenth.
Also prints how long the server took from start to answering /health.
Usage: python -m benchmarks.first_request [--servers N] [--tls] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import requests
import SimpleITK as sitk

from benchmarks.support import free_port, start, stop, tomaat_serve
from examples.demo import phantom

APP = "examples/threshold.py"


def one_server(path: str, tls: tuple[str, str] | None) -> tuple[float, list[float]]:
    port = free_port()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    began = time.perf_counter()
    process = start(tomaat_serve(APP, port, tls), url, dict(os.environ))
    up = time.perf_counter() - began
    times = []
    try:
        for _ in range(10):
            with open(path, "rb") as handle:
                files = {"images": ("scan.nii.gz", handle.read(), "application/octet-stream")}
            started = time.perf_counter()
            answer = requests.post(url + "/predict", files=files, data={"threshold": "300"}, verify=False)
            times.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text[:200]
    finally:
        stop(process)
    return up, times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=5, help="fresh servers to time (default 5)")
    parser.add_argument("--tls", action="store_true", help="over HTTPS (a self-signed certificate)")
    parser.add_argument("--quick", action="store_true", help="one server, for CI")
    args = parser.parse_args(argv)
    servers = 1 if args.quick else args.servers
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "phantom.nii.gz")
        sitk.WriteImage(phantom(), path)
        tls = None
        if args.tls:
            from tomaat.net.tls import ensure_certificate

            tls = ensure_certificate(folder)
        print(f"first request vs tenth, {servers} fresh server(s), 64x64x48 NIfTI, {'HTTPS' if tls else 'HTTP'}")
        print(
            f"{'server':>6} {'up (s)':>8} {'first (ms)':>11} {'tenth (ms)':>11} {'median 2-10':>12} {'first/tenth':>12}"
        )
        ratios = []
        for index in range(servers):
            up, times = one_server(path, tls)
            ratio = times[0] / times[9]
            ratios.append(ratio)
            print(
                f"{index + 1:>6} {up:>8.2f} {times[0] * 1000:>11.1f} {times[9] * 1000:>11.1f} "
                f"{statistics.median(times[1:]) * 1000:>12.1f} {ratio:>12.2f}"
            )
        median = statistics.median(ratios)
        print(f"median first/tenth: {median:.2f} (target <= 1.2)")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
