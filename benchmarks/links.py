"""Slow links: a TOMAAT-Slicer-style v1 request against our client, over emulated LAN, DSL and 4G.

The TOMAAT paper (Table 1) timed its services over LAN, DSL and 4G. Here examples/threshold.py is
served by `tomaat serve` (plain HTTP, a subprocess) and reached through benchmarks/link.py's proxy,
one profile at a time (lan, dsl, 4g: see that module). With --tls a second `tomaat serve` of the same
app speaks HTTPS (a self-signed certificate the clients do not verify) through a proxy of the same
profile; the proxy relays bytes, so TLS passes through it untouched. The volume is a CT-like int16
phantom (air exactly -1000 around a body with organs of different HU, Gaussian noise only inside the
body, on a rotated grid with an offset origin) saved as an uncompressed MHA file. Each request is timed end to
end, from its start until all its outputs are decoded:

(a) v1, as TOMAAT-Slicer sends: the MHA file read and base64-encoded with the standard library as a
    text field of a requests_toolbelt MultipartEncoder form (with module_version), a new connection,
    the JSON answer's base64 label written to a file and read back with SimpleITK;
(b) our client's first request: a new `tomaat.client.Client(url)` and `.predict(images=PATH,
    threshold=...)`, whatever that call sends and receives today (the public API only);
(c) the same Client, the same file, another threshold: a repeated prediction with one changed parameter.

Each run uses a volume of its own (new noise) for each scheme, (b) and (c) before (a), so that nothing
a server or client might keep from an earlier request helps a later "first" one; with --tls each run
times both schemes, HTTP first in one run and HTTPS first in the next, so that both rows come from the
same minutes of a noisy machine. The bytes each way are counted at the proxy: for HTTPS they are the
TLS records, handshakes included. Default: 256^3 and 256x256x64, every profile, the median of 3 runs
per cell, HTTP only (about 13 minutes; --tls doubles that).
Usage: python -m benchmarks.links [--quick] [--tls] [--runs N] [--profiles lan dsl 4g] [--sizes 256 256x256x64]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import requests
import SimpleITK as sitk
from requests_toolbelt import MultipartEncoder

from benchmarks.link import PROFILES, Link, describe
from benchmarks.support import free_port, start, stop, tomaat_serve

THRESHOLDS = (100.0, 300.0)  # (a) and (b) use the first, (c) the second
GOALS = (("b", "dsl", 3.0), ("b", "4g", 3.0), ("c", "4g", 10.0))  # (request, profile, at least x faster than (a))
ROWS = {
    "a": "(a) v1, base64 MHA multipart",
    "b": "(b) our client, first request",
    "c": "(c) same client, new threshold",
}


def parse_size(text: str) -> tuple[int, int, int]:
    """An edge ("256": 256^3) or x by y by z ("256x256x64"), as the array's (z, y, x)."""
    edges = [int(part) for part in text.lower().split("x")]
    x, y, z = edges * 3 if len(edges) == 1 else edges
    return z, y, x


def anatomy(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(noise-free HU as int16, the body mask): air, body, lungs, liver, kidneys, spine."""
    z, y, x = (np.linspace(0, 1, n, dtype=np.float32) for n in shape)
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]

    def ellipsoid(cx, cy, cz, rx, ry, rz):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 < 1

    body = ellipsoid(0.5, 0.5, 0.5, 0.42, 0.32, 0.47)
    hu = np.where(body, np.int16(40), np.int16(-1000))
    for organ, value in (
        (ellipsoid(0.33, 0.45, 0.65, 0.12, 0.15, 0.25), -850),  # lungs
        (ellipsoid(0.67, 0.45, 0.65, 0.12, 0.15, 0.25), -850),
        (ellipsoid(0.62, 0.48, 0.33, 0.16, 0.13, 0.14), 60),  # liver
        (ellipsoid(0.36, 0.62, 0.3, 0.05, 0.05, 0.08), 160),  # kidneys
        (ellipsoid(0.64, 0.62, 0.3, 0.05, 0.05, 0.08), 160),
        (ellipsoid(0.5, 0.72, 0.5, 0.04, 0.04, 0.45), 700),  # spine
    ):
        hu[organ & body] = value
    return hu, body


def phantom(hu: np.ndarray, body: np.ndarray, seed: int, path: str) -> np.ndarray:
    """The anatomy with noise (sd 12 HU) inside the body only, written to path as uncompressed MHA."""
    array = hu.copy()
    noise = np.random.default_rng(seed).normal(0, 12, int(body.sum()))
    array[body] = np.clip(np.rint(hu[body] + noise), -1024, 3071)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.78, 0.78, 1.25 if array.shape[0] > 64 else 2.5))
    image.SetOrigin((-187.5, -212.25, 1043.0))
    a, b = np.radians(20), np.radians(8)  # a rotation about z, then a tilt about x
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    image.SetDirection(tuple((rz @ rx).ravel()))
    sitk.WriteImage(image, path, False)
    return array


def v1(url: str, path: str, threshold: float, folder: str) -> tuple[int, str]:
    """One request as TOMAAT-Slicer's module sends it: (labelled voxels, summary)."""
    with open(path, "rb") as handle:
        text = base64.encodebytes(handle.read()).decode("ascii")  # as the module's __base64_encode__
    form = MultipartEncoder({"images": text, "threshold": str(threshold), "module_version": "Slicer-v2"})
    headers = {"Content-Type": form.content_type}
    answer = requests.post(url + "/predict", data=form, headers=headers, timeout=600, verify=False)
    assert answer.status_code == 200, f"v1: HTTP {answer.status_code}: {answer.text[:200]}"
    labels, summary = None, None
    for item in json.loads(answer.content):
        if item["type"] == "LabelVolume":  # written, then loaded, as the module does
            result = os.path.join(folder, "labels_result.mha")
            with open(result, "wb") as handle:
                handle.write(base64.decodebytes(item["content"].encode("ascii")))
            labels = sitk.ReadImage(result)
            os.remove(result)
        elif item["type"] == "PlainText":
            summary = item["content"]
    return int(sitk.GetArrayViewFromImage(labels).sum()), summary


def ours(client, path: str, threshold: float) -> tuple[int, str]:
    result = client.predict(images=path, threshold=threshold)
    values = {output.name: output.value for output in result.outputs}
    return int(sitk.GetArrayViewFromImage(values["labels"]).sum()), values["summary"]


def timed(link: Link, request, expected: int) -> tuple[float, int, int]:
    """(seconds, bytes up, bytes down) of one request through the link, its answer checked."""
    up, down = link.counts()
    began = time.perf_counter()
    count, summary = request()
    elapsed = time.perf_counter() - began
    after = link.counts()
    assert count == expected and summary.startswith(f"{expected} voxels"), (count, expected, summary)
    return elapsed, after[0] - up, after[1] - down


def one_run(link: Link, scheme: str, path: str, array: np.ndarray, folder: str) -> dict:
    from tomaat.client import Client

    low, high = ((array >= t).sum() for t in THRESHOLDS)
    proxied = f"{scheme}://127.0.0.1:{link.port}"
    client = None

    def first():
        nonlocal client
        client = Client(proxied, timeout=60, insecure=scheme == "https")  # our own self-signed certificate
        return ours(client, path, THRESHOLDS[0])

    b = timed(link, first, low)
    c = timed(link, lambda: ours(client, path, THRESHOLDS[1]), high)
    a = timed(link, lambda: v1(proxied, path, THRESHOLDS[0], folder), low)
    return {"a": a, "b": b, "c": c}


def measure(ports: dict, shape, profiles, runs: int, folder: str) -> dict:
    """{(profile, scheme, request): (median seconds, median bytes up, median bytes down)} for one size.

    ports: {scheme: the port of the server speaking it}; each scheme has a link of its own to its server.
    """
    hu, body = anatomy(shape)
    path = os.path.join(folder, "volume.mha")
    seed = 0
    warm = phantom(hu, body, seed, path)  # each server's first requests of each kind, off the clock
    for scheme, port in ports.items():
        with Link(port, "none") as link:
            one_run(link, scheme, path, warm, folder)
    cells = {}
    for profile in profiles:
        samples = {(scheme, key): [] for scheme in ports for key in ROWS}
        with contextlib.ExitStack() as stack:
            links = {scheme: stack.enter_context(Link(port, profile)) for scheme, port in ports.items()}
            for run in range(runs):
                for scheme in list(ports)[:: -1 if run % 2 else 1]:  # neither scheme always goes first
                    seed += 1
                    array = phantom(hu, body, seed, path)
                    for key, sample in one_run(links[scheme], scheme, path, array, folder).items():
                        samples[scheme, key].append(sample)
        for (scheme, key), values in samples.items():
            cells[profile, scheme, key] = tuple(statistics.median(column) for column in zip(*values, strict=True))
    return cells


def report(shape, mha_bytes: int, cells: dict, profiles, schemes, runs: int) -> None:
    """One table: for each profile and request its HTTP row, then its HTTPS row with HTTPS/HTTP seconds."""
    z, y, x = shape
    size = f"{x}^3" if x == y == z else f"{x}x{y}x{z}"
    runs_text = f"median of {runs} runs" if runs > 1 else "1 run"
    over = "plain HTTP" if schemes == ["http"] else "HTTP and HTTPS (HTTPS bytes: TLS records, handshakes included)"
    mha = f"{mha_bytes / 1e6:.1f} MB uncompressed MHA"
    print(f"\nlinks: {size} int16 ({mha}), threshold example over {over}, {runs_text}")
    ratio = f"{'HTTPS/HTTP':>12}" if "https" in schemes else ""
    print(
        f"{'profile':<8}{'scheme':<7}{'request':<33}{'seconds':>9}{'bytes up':>14}{'bytes down':>13}{'vs (a)':>9}{ratio}"
    )
    for profile in profiles:
        for key, label in ROWS.items():
            for scheme in schemes:
                seconds, up, down = cells[profile, scheme, key]
                base = cells[profile, scheme, "a"][0]  # (a) over the same scheme
                line = f"{profile:<8}{scheme.upper():<7}{label:<33}{seconds:>9.2f}{up:>14,.0f}{down:>13,.0f}"
                line += f"{base / seconds:>8.2f}x"
                if scheme == "https":
                    line += f"{seconds / cells[profile, 'http', key][0]:>12.2f}"
                print(line)
    for scheme in schemes:
        goals = []
        for key, profile, factor in GOALS:
            if profile in profiles:
                got = cells[profile, scheme, "a"][0] / cells[profile, scheme, key][0]
                verdict = "met" if got >= factor else "not met"
                goals.append(f"({key}) >= {factor:g}x faster than (a) on {profile}: {got:.2f}x ({verdict})")
        name = "goals" if scheme == "http" else "goals over HTTPS"
        print(f"{name}: " + ("; ".join(goals) if goals else "none for these profiles"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64^3 on dsl, one run each: proves it runs (CI)")
    parser.add_argument("--tls", action="store_true", help="HTTPS rows beside the HTTP ones (twice the time)")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell, the median printed (default 3)")
    parser.add_argument("--profiles", nargs="+", choices=sorted(PROFILES), default=["lan", "dsl", "4g"])
    parser.add_argument("--sizes", nargs="+", default=["256", "256x256x64"], help="EDGE or XxYxZ")
    args = parser.parse_args(argv)
    sizes, profiles, runs = (["64"], ["dsl"], 1) if args.quick else (args.sizes, args.profiles, args.runs)
    for name in profiles:
        print(f"{name}: {describe(PROFILES[name])}")
    schemes = ["http", "https"] if args.tls else ["http"]
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        env = {**os.environ, "TMPDIR": folder, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__)) or "."}
        cert = None
        if args.tls:
            from tomaat.net.tls import ensure_certificate

            cert = ensure_certificate(folder, "127.0.0.1")
        servers, ports = [], {}
        try:
            for scheme in schemes:
                ports[scheme] = free_port()
                command = tomaat_serve("examples/threshold.py", ports[scheme], cert if scheme == "https" else None)
                url, log = f"{scheme}://127.0.0.1:{ports[scheme]}", os.path.join(folder, f"server-{scheme}.log")
                servers.append(start(command, url, env, log))
            for text in sizes:
                shape = parse_size(text)
                cells = measure(ports, shape, profiles, runs, folder)
                report(shape, os.path.getsize(os.path.join(folder, "volume.mha")), cells, profiles, schemes, runs)
        finally:
            for server in servers:
                stop(server)
    print("OK")  # every request was answered and its labels checked (a failure raises)
    return 0


if __name__ == "__main__":
    sys.exit(main())
