"""The researcher's side: preprocess, inference, postprocess on a plain dict.

An app knows nothing about HTTP, so it can be called directly in a notebook or
a test (`app(data)`), and the service can run its three steps separately to
hold the GPU lock around inference only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Step = Callable[[dict], Any]


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
    input_interface: tuple | list = ()
    output_interface: tuple | list = ()

    def __init__(
        self,
        preprocess_fun: Step | None = None,
        inference_fun: Step | None = None,
        postprocess_fun: Step | None = None,
    ):
        self._steps = {"preprocess": preprocess_fun, "inference": inference_fun, "postprocess": postprocess_fun}

    def _run(self, step: str, data: dict) -> dict:
        fun = self._steps.get(step) or getattr(self, step)
        result = fun(data)
        return data if result is None else result

    def preprocess(self, data: dict) -> dict:
        return data

    def inference(self, data: dict) -> dict:
        return data

    def postprocess(self, data: dict) -> dict:
        return data

    def run_preprocess(self, data: dict) -> dict:
        return self._run("preprocess", data)

    def run_inference(self, data: dict) -> dict:
        return self._run("inference", data)

    def run_postprocess(self, data: dict) -> dict:
        return self._run("postprocess", data)

    def __call__(self, data: dict) -> dict:
        return self.run_postprocess(self.run_inference(self.run_preprocess(data)))

    def metadata(self) -> dict[str, str]:
        return {
            key: str(getattr(self, key)) for key in ("name", "modality", "anatomy", "task", "description", "version")
        }
