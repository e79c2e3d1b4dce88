"""Latency benchmark on loopback: one float32 volume through our client, a v1 client and a bare floor server.

Starts the threshold example server and the floor (benchmarks/floor.py) as
subprocesses and prints the median end-to-end latency of (a) tomaat's own
client (a binary v2 part), (b) a v1 client (base64 MHA in a multipart form,
JSON with base64 back, as TOMAAT-Slicer sends), (c) the floor; the ratios
a/c and b/c; the server's time per stage; its peak memory growth for one request.
With --tls the whole run is repeated over HTTPS and the TLS/plain ratios printed,
so both figures of each ratio come from the same minutes of a noisy machine.
Usage: python -m benchmarks.latency [--size 256] [--tls] [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time

import numpy as np
import requests
import SimpleITK as sitk
from requests_toolbelt import MultipartEncoder

from benchmarks.support import PeakMemory, free_port, median_ms, stage_sums, start, stop, tomaat_serve

STAGES = ("receive", "parse", "decode", "preprocess", "lock_wait", "inference", "postprocess", "encode", "send")
THRESHOLD = 500.0


def volume(size: int, folder: str) -> tuple[np.ndarray, bytes]:
    """A noisy float32 ball and its uncompressed MHA file, the usual way a scanner export arrives.

    The noise keeps the volume as incompressible as a real scan; the ball
    gives a mask with the long runs a real segmentation has.
    """
    z, y, x = np.ogrid[:size, :size, :size]
    centre = (size - 1) / 2
    radius = np.sqrt((z - centre) ** 2 + (y - centre) ** 2 + (x - centre) ** 2, dtype=np.float32)
    noise = np.random.default_rng(5).normal(0, 20, (size, size, size)).astype(np.float32)
    array = (1000 * (1 - radius / size) + noise).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 1.5))
    image.SetOrigin((-10.0, 4.0, 2.5))
    path = os.path.join(folder, "volume.mha")
    sitk.WriteImage(image, path, False)
    with open(path, "rb") as handle:
        data = handle.read()
    os.remove(path)
    return array, data


def ours(url: str, mha: bytes, expected: int):
    from tomaat.client.blocking import Client

    client = Client(url, insecure=True, timeout=300)

    def one() -> tuple[float, float]:
        began = time.perf_counter()
        result = client.predict(images=mha, threshold=THRESHOLD)
        labels = sitk.GetArrayViewFromImage(result.outputs[0].value)
        elapsed = time.perf_counter() - began
        got = int(labels.sum())
        assert got == expected, f"our client: {got} voxels labelled, expected {expected}"
        return elapsed, 0.0

    return one


def v1(url: str, mha: bytes, expected: int, folder: str):
    def one() -> tuple[float, float]:
        """(end-to-end seconds, seconds of it the client spent base64-encoding the volume)."""
        began = time.perf_counter()
        text = base64.encodebytes(mha)  # the standard library, as TOMAAT-Slicer does
        encoded = time.perf_counter() - began
        fields = {"images": text, "threshold": str(THRESHOLD), "module_version": "1"}
        form = MultipartEncoder({k: (None, v) for k, v in fields.items()})
        answer = requests.post(url + "/predict", data=form, headers={"Content-Type": form.content_type}, verify=False)
        items = json.loads(answer.content)
        path = os.path.join(folder, "labels.mha")  # as Slicer does: the file is written, then loaded
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(items[0]["content"]))
        image = sitk.ReadImage(path)  # kept: a view's buffer lives only as long as its image
        labels = sitk.GetArrayViewFromImage(image)
        elapsed = time.perf_counter() - began
        os.remove(path)
        got = int(labels.sum())
        assert answer.status_code == 200 and got == expected, f"v1 client: {answer.status_code}, {got} != {expected}"
        return elapsed, encoded

    return one


def floor(url: str, array: np.ndarray, expected: int):
    raw = array.tobytes()

    def one() -> tuple[float, float]:
        began = time.perf_counter()
        answer = requests.post(url, data=raw, headers={"X-Threshold": str(THRESHOLD)}, verify=False)
        mask = np.frombuffer(answer.content, dtype=np.uint8)
        elapsed = time.perf_counter() - began
        got = int(mask.sum())
        assert got == expected, f"floor: {got} voxels labelled, expected {expected}"
        return elapsed, 0.0

    return one


def measure(one, runs: int, url: str | None = None) -> tuple[float, float, dict]:
    """(median ms, median ms of the client's own encoding, mean server seconds per stage)."""
    one()  # warm-up: imports, connections, first-touch allocations
    before = stage_sums(url) if url else {}
    times, sends = zip(*(one() for _ in range(runs)), strict=True)
    after = stage_sums(url) if url else {}
    stages = {name: (after[name] - before.get(name, 0.0)) / runs for name in after}
    return median_ms(times), median_ms(sends), stages


def run(size: int, runs: int, tls: tuple[str, str] | None, folder: str) -> dict:
    """Both servers up, the three clients timed, both servers down: one table's figures."""
    env = {**os.environ, "TMPDIR": folder, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__)) or "."}
    scheme = "https" if tls else "http"
    array, mha = volume(size, folder)
    expected = int((array >= THRESHOLD).sum())
    port, floor_port = free_port(), free_port()
    url, floor_url = f"{scheme}://127.0.0.1:{port}", f"{scheme}://127.0.0.1:{floor_port}"
    server = start(tomaat_serve("examples/threshold.py", port, tls), url, env, os.path.join(folder, "server.log"))
    bare = start([sys.executable, "-m", "benchmarks.floor", str(floor_port), *(tls or ())], floor_url, env)
    try:
        a, _, stages_a = measure(ours(url, mha, expected), runs, url)
        b, encode_b, stages_b = measure(v1(url, mha, expected, folder), runs, url)
        c, _, _ = measure(floor(floor_url, array, expected), runs)
        with PeakMemory(server.pid) as memory_a:
            ours(url, mha, expected)()
        with PeakMemory(server.pid) as memory_b:
            v1(url, mha, expected, folder)()
    finally:
        stop(server)
        stop(bare)
    return {
        "scheme": scheme, "mib": array.nbytes / 2**20, "a": a, "b": b, "c": c, "encode_b": encode_b,
        "stages_a": stages_a, "stages_b": stages_b, "memory_a": memory_a, "memory_b": memory_b,
    }  # fmt: skip


def report(size: int, runs: int, r: dict) -> None:
    a, b, c, mib = r["a"], r["b"], r["c"], r["mib"]
    print(f"latency: {size}^3 float32 ({mib:.0f} MiB), {r['scheme']}, median of {runs} runs")
    print(f"{'client':<34}{'median ms':>10}{'x floor':>9}")
    print(f"{'(a) tomaat client, v2 binary part':<34}{a:>10.1f}{a / c:>9.2f}")
    print(f"{'(b) v1 client, base64 multipart':<34}{b:>10.1f}{b / c:>9.2f}")
    print(f"{'    of which its own base64 encoding':<34}{r['encode_b']:>10.1f}{r['encode_b'] / c:>9.2f}")
    print(f"{'(c) floor, raw bytes':<34}{c:>10.1f}{1:>9.2f}")
    print("server stages, mean ms per request (send: until the transport took the answer's last byte)")
    print(f"{'stage':<14}{'(a)':>9}{'(b)':>9}")
    for name in STAGES:
        print(f"{name:<14}{r['stages_a'].get(name, 0.0) * 1000:>9.1f}{r['stages_b'].get(name, 0.0) * 1000:>9.1f}")
    grow_a, grow_b = r["memory_a"].growth_mib, r["memory_b"].growth_mib
    print(
        f"server peak memory growth for one request: (a) {grow_a:.0f} MiB, (b) {grow_b:.0f} MiB "
        f"= {grow_a / mib:.1f}x / {grow_b / mib:.1f}x the volume ({r['memory_a'].method})"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic float32 volume (default 256)")
    parser.add_argument("--tls", action="store_true", help="also over HTTPS (self-signed), with TLS/plain ratios")
    parser.add_argument("--runs", type=int, default=5, help="timed requests per client (default 5)")
    parser.add_argument("--quick", action="store_true", help="a small run for CI (32^3, 2 runs)")
    args = parser.parse_args(argv)
    size, runs = (32, 2) if args.quick else (args.size, args.runs)
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        plain = run(size, runs, None, folder)
        report(size, runs, plain)
        if args.tls:
            from tomaat.net.tls import ensure_certificate

            secure = run(size, runs, ensure_certificate(folder, "127.0.0.1"), folder)
            report(size, runs, secure)
            print("TLS / plain HTTP, same run: " + ", ".join(f"({k}) {secure[k] / plain[k]:.2f}" for k in "abc"))
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
