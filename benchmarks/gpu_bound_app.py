"""The throughput benchmark's app: a GPU-bound model in miniature.

Inference sleeps 200 ms under the GPU lock, as a network on an accelerator
would leave the CPU idle; preprocess and postprocess each spend about 100 ms
of real CPU in hashing, which releases the GIL as NumPy and SimpleITK do, so
a server that overlaps them with inference reaches the GPU's 5 requests/s.
"""

import hashlib
import time

from tomaat import PlainText, Slider, TomaatApp, Volume

CPU_SECONDS = 0.1
GPU_SECONDS = 0.2
_BLOCK = b"\0" * (1 << 20)


def _calibrate() -> int:
    began, rounds = time.perf_counter(), 0
    while time.perf_counter() - began < 0.05:
        hashlib.sha256(_BLOCK).digest()
        rounds += 1
    return max(1, round(rounds * CPU_SECONDS / (time.perf_counter() - began)))


_ROUNDS = _calibrate()


def _cpu() -> None:
    for _ in range(_ROUNDS):
        hashlib.sha256(_BLOCK).digest()


class GpuBoundApp(TomaatApp):
    name = "GPU-bound benchmark"
    input_interface = [Volume("images"), Slider("threshold", 0, 1000)]
    output_interface = [PlainText("summary", "Summary")]

    def preprocess(self, data):
        _cpu()

    def inference(self, data):
        time.sleep(GPU_SECONDS)

    def postprocess(self, data):
        _cpu()
        data["summary"] = f"{data['images'].GetSize()}"


app = GpuBoundApp()
