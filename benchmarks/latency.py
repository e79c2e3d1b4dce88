"""Latency benchmark on loopback: one float32 volume through our client, a v1 client and a bare floor server.

Starts the threshold example server and the floor (benchmarks/floor.py) as
subprocesses and prints the median end-to-end latency of (a) tomaat's own
client (a binary v2 part) from the MHA's bytes and (a') from its file, (b) a v1
client (base64 MHA in a multipart form, JSON with base64 back, as TOMAAT-Slicer
sends), (c) the floor; the ratios to the floor; the server's time per stage; its
peak memory growth for one request. With --tls an HTTPS server and an HTTPS floor
run beside the plain ones and every client's requests are interleaved over all of
them, so "HTTPS ours / HTTP floor" and the TLS/plain ratios come from the same
minutes of a noisy machine.
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

from benchmarks.support import PeakMemory, cpu_seconds, free_port, median_ms, stage_sums, start, stop, tomaat_serve

STAGES = ("receive", "parse", "decode", "preprocess", "lock_wait", "inference", "postprocess", "encode", "send")
THRESHOLD = 500.0


def volume(size: int, folder: str) -> tuple[np.ndarray, bytes, str]:
    """A noisy float32 ball, its uncompressed MHA file's bytes and path, the usual way a scanner export arrives.

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
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))  # a rotated grid: geometry no default has
    path = os.path.join(folder, "volume.mha")
    sitk.WriteImage(image, path, False)
    with open(path, "rb") as handle:
        data = handle.read()
    return array, data, path


def ours(url: str, mha: bytes | str, expected: int):
    """Our client, given the MHA's bytes or (a str) its path: a user's script passes either."""
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


def measure(clients: dict, runs: int) -> dict:
    """{name: (median ms, median ms of the client's own encoding, mean server seconds per stage, mean CPU ms
    of the server's process, mean CPU ms of this process, i.e. the client's)}.

    clients: {name: (one, url of its tomaat server or None, pid of the server it talks to)}. Each round times
    every client once, in turn, so a burst of load on a shared machine falls on all of them rather than on
    one client's runs. CPU time, unlike the wall clock, hardly moves with the machine's other load.
    """
    for one, _, _ in clients.values():
        one()  # warm-up: imports, connections, first-touch allocations
    times: dict = {name: [] for name in clients}
    stages: dict = {name: {} for name in clients}
    for _ in range(runs):
        for name, (one, url, pid) in clients.items():
            before = stage_sums(url) if url else {}
            server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
            elapsed, encoded = one()
            server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
            times[name].append((elapsed, encoded, server_cpu, client_cpu))
            after = stage_sums(url) if url else {}
            for stage, total in after.items():
                stages[name][stage] = stages[name].get(stage, 0.0) + (total - before.get(stage, 0.0)) / runs
    return {
        name: (*(median_ms([row[i] for row in times[name]]) for i in (0, 1)), stages[name])
        + tuple(1000 * sum(row[i] for row in times[name]) / runs for i in (2, 3))  # means: /proc counts 10 ms ticks
        for name in clients
    }


def run(size: int, runs: int, schemes: list[str], folder: str) -> dict:
    """The servers up (ours and the floor, for each scheme), the clients timed, all down: {scheme: its figures}."""
    env = {**os.environ, "TMPDIR": folder, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__)) or "."}
    array, mha, path = volume(size, folder)
    expected = int((array >= THRESHOLD).sum())
    tls = None
    if "https" in schemes:
        from tomaat.net.tls import ensure_certificate

        tls = ensure_certificate(folder, "127.0.0.1")
    servers: list = []
    clients: dict = {}
    urls: dict = {}
    try:
        for scheme in schemes:
            cert = tls if scheme == "https" else None
            port, floor_port = free_port(), free_port()
            url, floor_url = f"{scheme}://127.0.0.1:{port}", f"{scheme}://127.0.0.1:{floor_port}"
            log = os.path.join(folder, f"server-{scheme}.log")
            servers.append(start(tomaat_serve("examples/threshold.py", port, cert), url, env, log))
            pid = servers[-1].pid
            urls[scheme] = (url, pid)
            floor_command = [sys.executable, "-m", "benchmarks.floor", str(floor_port), *(cert or ())]
            servers.append(start(floor_command, floor_url, env))
            clients[scheme, "a"] = (ours(url, mha, expected), url, pid)
            clients[scheme, "file"] = (ours(url, path, expected), url, pid)
            clients[scheme, "b"] = (v1(url, mha, expected, folder), url, pid)
            clients[scheme, "c"] = (floor(floor_url, array, expected), None, servers[-1].pid)
        figures = measure(clients, runs)
        results = {}
        for scheme in schemes:
            url, pid = urls[scheme]
            with PeakMemory(pid) as memory_a:
                ours(url, mha, expected)()
            with PeakMemory(pid) as memory_b:
                v1(url, mha, expected, folder)()
            (a, _, stages_a, *_), (b, encode_b, stages_b, *_) = figures[scheme, "a"], figures[scheme, "b"]
            results[scheme] = {
                "scheme": scheme, "mib": array.nbytes / 2**20, "a": a, "file": figures[scheme, "file"][0], "b": b,
                "c": figures[scheme, "c"][0], "encode_b": encode_b, "stages_a": stages_a, "stages_b": stages_b,
                "memory_a": memory_a, "memory_b": memory_b,
                "cpu": {key: figures[scheme, key][3:] for key in ("a", "file", "b", "c")},
            }  # fmt: skip
    finally:
        for server in servers:
            stop(server)
    return results


def report(size: int, runs: int, r: dict) -> None:
    a, b, c, mib = r["a"], r["b"], r["c"], r["mib"]
    print(f"latency: {size}^3 float32 ({mib:.0f} MiB), {r['scheme']}, median of {runs} runs")
    print(f"{'client':<34}{'median ms':>10}{'x floor':>9}")
    print(f"{'(a) tomaat client, v2 binary part':<34}{a:>10.1f}{a / c:>9.2f}")
    name = "(a') the same, sent from its file"
    print(f"{name:<34}{r['file']:>10.1f}{r['file'] / c:>9.2f}")
    print(f"{'(b) v1 client, base64 multipart':<34}{b:>10.1f}{b / c:>9.2f}")
    print(f"{'    of which its own base64 encoding':<34}{r['encode_b']:>10.1f}{r['encode_b'] / c:>9.2f}")
    print(f"{'(c) floor, raw bytes':<34}{c:>10.1f}{1:>9.2f}")
    print("server stages, mean ms per request (send: until the transport took the answer's last byte)")
    print(f"{'stage':<14}{'(a)':>9}{'(b)':>9}")
    for name in STAGES:
        print(f"{name:<14}{r['stages_a'].get(name, 0.0) * 1000:>9.1f}{r['stages_b'].get(name, 0.0) * 1000:>9.1f}")
    cpu = r["cpu"]
    print(
        "CPU ms per request (mean), server process / client: "
        + ", ".join(
            f"({k}) {cpu[key][0]:.0f} / {cpu[key][1]:.0f}" for k, key in zip(("a", "a'", "b", "c"), cpu, strict=True)
        )
    )
    grow_a, grow_b = r["memory_a"].growth_mib, r["memory_b"].growth_mib
    print(
        f"server peak memory growth for one request: (a) {grow_a:.0f} MiB, (b) {grow_b:.0f} MiB "
        f"= {grow_a / mib:.1f}x / {grow_b / mib:.1f}x the volume ({r['memory_a'].method})"
    )


def compare(plain: dict, secure: dict) -> None:
    """Our client over each scheme against the plain HTTP floor, the yardstick of issue 25."""
    floor_ms = plain["c"]
    print(f"against the HTTP floor ({floor_ms:.1f} ms), same run:")
    print(f"{'':<34}{'median ms':>10}{'x floor':>9}{'target':>9}")
    rows = (
        ("(a) ours, HTTPS", secure["a"], 1.3),
        ("(a) ours, HTTP", plain["a"], 1.15),
        ("(a') ours from a file, HTTPS", secure["file"], 1.3),
        ("(a') ours from a file, HTTP", plain["file"], 1.15),
        ("(c) floor, HTTPS", secure["c"], None),
    )
    for name, value, target in rows:
        print(f"{name:<34}{value:>10.1f}{value / floor_ms:>9.2f}{'' if target is None else f'<= {target}':>9}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic float32 volume (default 256)")
    parser.add_argument("--tls", action="store_true", help="also over HTTPS (self-signed), with TLS/plain ratios")
    parser.add_argument("--runs", type=int, default=5, help="timed requests per client (default 5)")
    parser.add_argument("--quick", action="store_true", help="a small run for CI (32^3, 2 runs)")
    args = parser.parse_args(argv)
    size, runs = (32, 2) if args.quick else (args.size, args.runs)
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        results = run(size, runs, ["http", "https"] if args.tls else ["http"], folder)
    for figures in results.values():
        report(size, runs, figures)
    if args.tls:
        plain, secure = results["http"], results["https"]
        print("TLS / plain HTTP, same run: " + ", ".join(f"({k}) {secure[k] / plain[k]:.2f}" for k in "abc"))
        extra = [secure["cpu"][k][i] - plain["cpu"][k][i] for k in ("a", "c") for i in (0, 1)]
        print("CPU ms per request HTTPS adds, server / client: (a) {:.0f} / {:.0f}, (c) {:.0f} / {:.0f}".format(*extra))
        compare(plain, secure)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
