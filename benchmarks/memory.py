"""Server memory for one request: the growth of its peak resident memory (VmHWM) per client, as a multiple of the volume.

Starts the threshold example server (HTTP) as a subprocess and sends one float32 volume, as an uncompressed
MHA file's bytes, through (a) tomaat's own client (a binary v2 part) and (b) a v1 client (base64 MHA text in
a multipart form, JSON with base64 back, as TOMAAT-Slicer sends). Each client sends one request first (imports,
connections, the allocator's first touches; --warm), then --runs requests, each measured alone: VmHWM is reset to the
current RSS through /proc/PID/clear_refs before it and read after it (benchmarks/support.PeakMemory).
Issue 25's targets for 256^3: (a) <= 1.6x, (b) <= 2.5x.
Usage: python -m benchmarks.memory [--size 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile

import requests
import SimpleITK as sitk
from requests_toolbelt import MultipartEncoder

from benchmarks.latency import THRESHOLD
from benchmarks.latency import volume as latency_volume
from benchmarks.support import PeakMemory, free_port, start, stop, tomaat_serve

TARGETS = {"a": 1.6, "b": 2.5}


def volume(size: int) -> tuple[int, bytes]:
    """(voxels at or above the threshold, the MHA file's bytes): the latency benchmark's noisy ball."""
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        array, data, _path = latency_volume(size, folder)
    return int((array >= THRESHOLD).sum()), data


def ours(url: str, mha: bytes, expected: int):
    from tomaat.client.blocking import Client

    client = Client(url, insecure=True, timeout=300)

    def one() -> None:
        result = client.predict(images=mha, threshold=THRESHOLD)
        got = int(sitk.GetArrayViewFromImage(result.outputs[0].value).sum())
        assert got == expected, f"our client: {got} voxels labelled, expected {expected}"

    return one


def v1(url: str, mha: bytes, expected: int):
    text = base64.encodebytes(mha)  # the standard library's MIME lines, as TOMAAT-Slicer writes them

    def one() -> None:
        form = MultipartEncoder({"images": (None, text), "threshold": (None, str(THRESHOLD))})
        answer = requests.post(url + "/predict", data=form, headers={"Content-Type": form.content_type}, timeout=300)
        assert answer.status_code == 200, answer.text[:300]
        content = base64.b64decode(json.loads(answer.content)[0]["content"])
        image = sitk.ImageFileReader()
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
            path = os.path.join(folder, "labels.mha")
            with open(path, "wb") as handle:
                handle.write(content)
            image.SetFileName(path)
            labels = image.Execute()  # kept: a view's buffer lives only as long as its image
            got = int(sitk.GetArrayViewFromImage(labels).sum())
        assert got == expected, f"v1 client: {got} voxels labelled, expected {expected}"

    return one


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic float32 volume (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="measured requests per client (default 3)")
    parser.add_argument("--warm", type=int, default=1, help="unmeasured requests per client first (default 1)")
    args = parser.parse_args(argv)
    expected, mha = volume(args.size)
    mib = args.size**3 * 4 / 2**20
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    server = start(tomaat_serve("examples/threshold.py", port, None), url, env)
    growth: dict[str, list[float]] = {"a": [], "b": []}
    try:
        for name, one in (("a", ours(url, mha, expected)), ("b", v1(url, mha, expected))):
            for _ in range(args.warm):
                one()
            for _ in range(args.runs):
                with PeakMemory(server.pid) as memory:
                    one()
                growth[name].append(memory.growth_mib)
    finally:
        stop(server)
    print(
        f"server peak memory growth ({memory.method}) for one request: {args.size}^3 float32 ({mib:.0f} MiB), http, "
        f"{args.runs} measured after {args.warm} unmeasured request(s) per client"
    )
    print(f"{'client':<34}{'median MiB':>11}{'max MiB':>9}{'median x':>10}{'max x':>7}{'target':>8}")
    labels = {"a": "(a) tomaat client, v2 binary part", "b": "(b) v1 client, base64 multipart"}
    for name, values in growth.items():
        median, most = statistics.median(values), max(values)
        print(
            f"{labels[name]:<34}{median:>11.0f}{most:>9.0f}{median / mib:>9.2f}x{most / mib:>6.2f}x"
            f"{TARGETS[name]:>7.1f}x"
        )
    print("load average: " + " ".join(f"{value:.2f}" for value in os.getloadavg()))
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
