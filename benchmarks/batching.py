"""Dynamic batching benchmark on loopback: 8 concurrent clients against the same model, batched and not.

The model is a GPU in miniature: 200 ms asleep under the GPU lock per forward pass, whether the
pass holds one request (the unbatched app, 5 requests/s at most) or up to 4 (the batched app,
max_batch 4: 20 requests/s at most). Preprocess and postprocess are light, so what is measured is
the batching, not the CPU. A lone request (one client, nothing else running) shows what batching
costs a request that has no company: at most max_delay_ms.
Usage: python -m benchmarks.batching [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests
import SimpleITK as sitk

from benchmarks.support import free_port, median_ms, start, stop, tomaat_serve
from benchmarks.throughput import small_volume
from tomaat import PlainText, TomaatApp, Volume

CLIENTS = 8
GPU_SECONDS = 0.2
MAX_BATCH = 4
MAX_DELAY_MS = 5.0
GOAL_RATIO = 3.5
GOAL_LONE = 1.15


class OnePass(TomaatApp):
    """Each request's inference is a pass of its own."""

    name = "Batching benchmark"
    input_interface = [Volume("images")]
    output_interface = [PlainText("summary", "Summary")]

    def preprocess(self, data):
        data["mean"] = float(sitk.GetArrayViewFromImage(data["images"]).mean())

    def inference(self, data):
        time.sleep(GPU_SECONDS)

    def inference_batch(self, items):
        time.sleep(GPU_SECONDS)  # one pass, however many items (up to max_batch)
        return items

    def postprocess(self, data):
        data["summary"] = f"mean {data['mean']:.2f}"


class Batched(OnePass):
    max_batch = MAX_BATCH
    max_delay_ms = MAX_DELAY_MS


unbatched = OnePass()
batched = Batched()

_BATCHES = re.compile(r"^tomaat_batch_size_(sum|count) (\S+)$", re.M)


def measure(name: str, total: int, lone: int, folder: str, env: dict) -> dict:
    """Throughput of `total` requests from 8 clients, then `lone` requests one at a time, against one server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    here = os.path.relpath(os.path.abspath(__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    server = start(tomaat_serve(f"{here}:{name}", port, None), url, env)
    fields = {"images": (None, small_volume(folder))}

    def one(_):
        began = time.perf_counter()
        ok = requests.post(url + "/predict", files=fields, timeout=120).status_code == 200
        return ok, time.perf_counter() - began

    def batches() -> tuple[float, float]:
        found = dict(_BATCHES.findall(requests.get(url + "/metrics", timeout=10).text))
        return float(found.get("sum", 0)), float(found.get("count", 0))

    try:
        one(0)  # warm-up: the app's first call
        before = batches()
        began = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            loaded = list(pool.map(one, range(total)))
        elapsed = time.perf_counter() - began
        after = batches()
        alone = [one(i) for i in range(lone)]
    finally:
        stop(server)
    requests_batched, count = after[0] - before[0], after[1] - before[1]
    mean_batch = requests_batched / count if count else 1.0  # of the loaded run: an unbatched app has none
    return {
        "errors": sum(not ok for ok, _ in loaded + alone),
        "rate": total / elapsed,
        "latency": median_ms([t for _, t in loaded]),
        "lone": median_ms([t for _, t in alone]),
        "batch": mean_batch,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run for CI (16 requests, 3 alone)")
    parser.add_argument("--requests", type=int, default=80, help="requests from the 8 clients, per server")
    parser.add_argument("--lone", type=int, default=10, help="requests sent one at a time, per server")
    args = parser.parse_args(argv)
    total, lone = (16, 3) if args.quick else (args.requests, args.lone)
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        env = {**os.environ, "TMPDIR": folder, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__)) or "."}
        one = measure("unbatched", total, lone, folder, env)
        many = measure("batched", total, lone, folder, env)
    errors = one["errors"] + many["errors"]
    ratio, lone_ratio = many["rate"] / one["rate"], many["lone"] / one["lone"]
    print(
        f"batching: {total} requests from {CLIENTS} clients and {lone} alone per server, "
        f"max_batch {MAX_BATCH}, max_delay_ms {MAX_DELAY_MS:g}, {GPU_SECONDS * 1000:.0f} ms per pass, {errors} errors"
    )
    print(f"{'':<28}{'unbatched':>10}{'batched':>10}{'ratio':>9}")
    print(f"{'requests/s':<28}{one['rate']:>10.2f}{many['rate']:>10.2f}{ratio:>8.2f}x  (goal >= {GOAL_RATIO}x)")
    print(f"{'median latency ms, loaded':<28}{one['latency']:>10.1f}{many['latency']:>10.1f}")
    print(
        f"{'lone request ms (median)':<28}{one['lone']:>10.1f}{many['lone']:>10.1f}{lone_ratio:>8.2f}x  (goal <= {GOAL_LONE}x)"
    )
    print(f"{'mean batch size':<28}{one['batch']:>10.2f}{many['batch']:>10.2f}")
    met = ratio >= GOAL_RATIO and lone_ratio <= GOAL_LONE
    print(f"goals {'met' if met else 'missed'}" + (" (not required of --quick)" if args.quick else ""))
    ok = errors == 0 and (met or args.quick)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
