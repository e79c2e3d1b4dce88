"""The researcher's side: preprocess, inference, postprocess on a plain dict.

An app knows nothing about HTTP, so it can be called directly in a notebook or
a test (`app(data)`), and the service can run its three steps separately to
hold the GPU lock around inference only.

Two contracts say what an app finds in `data` and leaves there
(docs/writing-an-app.md): upstream TOMAAT's one-item lists of paths and
strings, for functions written for upstream, and ours, with SimpleITK images,
floats and bools, for subclasses. The step functions and the contract are
class attributes too, so a subclass that forgets `super().__init__()` works.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

Step = Callable[[dict], Any]

RICH = "rich"
UPSTREAM = "upstream"
CONTRACTS = (RICH, UPSTREAM)
STEPS = ("preprocess", "inference", "postprocess")


def batch_settings(app) -> tuple[int, float]:
    """The app's (max_batch, max_delay_ms), refused at start rather than by the first batch that would need them."""
    size = getattr(app, "max_batch", 1)
    delay = getattr(app, "max_delay_ms", 0.0)
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"the app's max_batch is {size!r}; expected a whole number of at least 1 (1: no batching)")
    if isinstance(delay, bool) or not isinstance(delay, numbers.Real) or not math.isfinite(delay) or delay < 0:
        raise ValueError(f"the app's max_delay_ms is {delay!r}; expected a finite number of milliseconds, at least 0")
    return int(size), float(delay)


def _check(contract: str) -> str:
    if contract not in CONTRACTS:
        raise ValueError(f"unknown contract {contract!r}; expected {RICH!r} or {UPSTREAM!r}")
    return contract


class TomaatApp:
    """Subclass and override the steps, or pass them as functions (upstream style).

    Each step receives the data dict and returns it (or returns None after
    changing it in place). Class attributes describe the service.
    """

    name: str = "TOMAAT service"
    modality: str = ""
    anatomy: str = ""
    task: str = ""
    description: str = ""
    version: str = "1"
    # model metadata (protocol/metadata.py), listed in /info and announced; empty: not stated
    licence: str = ""
    citation: str = ""
    intended_use: str = ""
    disclaimer: str = ""  # e.g. "Research use only: not for clinical judgement."
    accuracy: tuple | list = ()  # measured results: {"metric": "Dice", "value": 0.87, "dataset": "PROMISE12 test"}
    input_interface: tuple | list = ()
    output_interface: tuple | list = ()
    contract: str | None = None  # None: upstream's when step functions are given, else ours (RICH)
    gpu: bool = True  # False: inference runs without the server's GPU lock, alongside other requests
    # Dynamic batching (docs/writing-an-app.md): up to max_batch concurrent requests' inference in one
    # inference_batch call, formed when the model frees; an idle model waits up to max_delay_ms for company.
    max_batch: int = 1  # 1: one request at a time, inference() only
    max_delay_ms: float = 0.0
    preprocess_fun: Step | None = None
    inference_fun: Step | None = None
    postprocess_fun: Step | None = None

    def __init__(
        self,
        preprocess_fun: Step | None = None,
        inference_fun: Step | None = None,
        postprocess_fun: Step | None = None,
        *,
        contract: str | None = None,
    ):
        for step, fun in zip(STEPS, (preprocess_fun, inference_fun, postprocess_fun), strict=True):
            if fun is not None and not callable(fun):
                raise TypeError(f"{step}_fun must be callable, got {type(fun).__name__}")
            setattr(self, step + "_fun", fun)
        if contract is not None:
            self.contract = contract
        if self.contract is not None:
            _check(self.contract)  # refused here, not on the first request

    @property
    def data_contract(self) -> str:
        """RICH or UPSTREAM: what the server puts in `data` and how it reads the outputs."""
        if self.contract is None:
            given = any(getattr(self, step + "_fun", None) is not None for step in STEPS)
            return UPSTREAM if given else RICH
        return _check(self.contract)

    def _run(self, step: str, data: dict) -> dict:
        fun = getattr(self, step + "_fun", None) or getattr(self, step)
        result = fun(data)
        return data if result is None else result

    def setup(self, device: str) -> None:
        """Called once when the service starts, before the first request, on a worker thread: load weights here,
        on `device` (the service's `device` setting: "auto" lets the framework pick, e.g. "cuda:1" or "cpu")."""

    def preprocess(self, data: dict) -> dict:
        return data

    def inference(self, data: dict) -> dict:
        return data

    def postprocess(self, data: dict) -> dict:
        return data

    def inference_batch(self, items: list[dict]) -> list[dict]:
        """Several requests' data at once, the i-th result for the i-th item; called only when max_batch > 1.

        Override it to run the model once on all items (a stacked array). The default hands the batch to an
        inference step that batches by itself (`tomaat.frameworks.Predict`), or runs `inference` item by item,
        so an app that only sets max_batch still answers correctly.
        """
        step = self.inference_fun or self.inference
        batched = getattr(step, "inference_batch", None)
        if callable(batched):
            return batched(items)
        return [self.run_inference(item) for item in items]

    def run_preprocess(self, data: dict) -> dict:
        return self._run("preprocess", data)

    def run_inference(self, data: dict) -> dict:
        return self._run("inference", data)

    def run_inference_batch(self, items: list[dict]) -> list[dict]:
        """inference_batch, with the steps' convention: None (changed in place) stands for the items themselves."""
        results = self.inference_batch(items)
        if results is None:
            return items
        if isinstance(results, (list, tuple)) and len(results) == len(items):
            return [item if result is None else result for item, result in zip(items, results, strict=True)]
        return results  # the wrong length or kind: the server fails the batch and logs what it got

    def run_postprocess(self, data: dict) -> dict:
        return self._run("postprocess", data)

    def __call__(self, data: dict, gpu_lock=None) -> dict:
        """All three steps; upstream's optional gpu_lock (anything with acquire/release) is held for inference."""
        data = self.run_preprocess(data)
        if gpu_lock is not None:
            gpu_lock.acquire()
        try:
            data = self.run_inference(data)
        finally:
            if gpu_lock is not None:
                gpu_lock.release()
        return self.run_postprocess(data)

    def metadata(self) -> dict[str, str]:
        return {
            key: str(getattr(self, key)) for key in ("name", "modality", "anatomy", "task", "description", "version")
        }
