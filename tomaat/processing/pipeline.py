"""Steps on the data dict, and the bookkeeping that lets geometry be undone.

A model sees images on its own grid (its spacing, a canonical direction, a size
it can divide); the client must get labels back on exactly the grid it sent.
Each geometry step therefore writes what it changed into the data dict itself,
never into the step object, so one app instance can serve concurrent requests
and `Restore` can walk the records backwards for any output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

UNDO = "_tomaat_undo"


@dataclass(frozen=True)
class Grid:
    """A grid is what geometry-sacred code compares: size, spacing, origin, direction."""

    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def stamp(self, image: sitk.Image) -> sitk.Image:
        """Set the recorded geometry verbatim, so round trips do not accumulate float error."""
        if image.GetSize() != self.size:
            raise ValueError(f"cannot put an image of size {image.GetSize()} on a grid of size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def reference(self) -> sitk.Image:
        image = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8)
        return self.stamp(image)


class MissingKey(KeyError):
    """A KeyError whose message reads as a sentence (KeyError's own str() quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0])


def read(data: dict, key: str, step) -> Any:
    """data[key], or a KeyError that says which step wanted it, what data holds and how to point the step elsewhere:
    the keys default to `images` -> `array` -> `prediction` -> `labels`, and an app whose volume input is named
    otherwise must pass key=... to its steps."""
    try:
        return data[key]
    except KeyError:
        held = ", ".join(repr(k) for k in data if not str(k).startswith("_")) or "nothing"
        raise MissingKey(
            f"{type(step).__name__} reads data[{key!r}], which is not there (data holds {held}); "
            f"pass the key it should read, e.g. {type(step).__name__}(..., key={next(iter(data), 'images')!r})"
        ) from None


class Step:
    """One operation on the data dict: reads `key`, writes `out` (default: `key`)."""

    def __init__(self, key: str = "images", out: str | None = None):
        self.key = key
        self.out = out or key

    def __call__(self, data: dict) -> dict:
        data[self.out] = self.apply(read(data, self.key, self))
        return data

    def apply(self, value):
        raise NotImplementedError


class GeometryStep(Step):
    """A step that changes the grid and records, in `data`, what undoes it."""

    def __init__(self, key: str = "images", out: str | None = None, chain: str = "images"):
        super().__init__(key, out)
        self.chain = chain

    def __call__(self, data: dict) -> dict:
        image, record = self.forward(read(data, self.key, self))
        data.setdefault(UNDO, {}).setdefault(self.chain, []).append((self, record))
        data[self.out] = image
        return data

    def forward(self, image: sitk.Image) -> tuple[sitk.Image, object]:
        raise NotImplementedError

    def inverse(self, image: sitk.Image, record, interpolator: int) -> sitk.Image:
        raise NotImplementedError


def default_interpolator(image: sitk.Image) -> int:
    """Labels must stay labels; probabilities and intensities are better interpolated."""
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64):
        return sitk.sitkLinear
    return sitk.sitkNearestNeighbor


class Restore(Step):
    """Undo every geometry step of `chain`, newest first, on `key` (a label map, probabilities...).

    Records are read, not consumed, so several outputs can be restored from one chain.
    """

    def __init__(self, key: str = "labels", out: str | None = None, chain: str = "images", interpolator=None):
        super().__init__(key, out)
        self.chain = chain
        self.interpolator = interpolator

    def __call__(self, data: dict) -> dict:
        image = read(data, self.key, self)
        interpolator = self.interpolator if self.interpolator is not None else default_interpolator(image)
        for step, record in reversed(data.get(UNDO, {}).get(self.chain, [])):
            image = step.inverse(image, record, interpolator)
        data[self.out] = image
        return data


class Compose:
    """Steps in order; a TomaatApp step can be a Compose."""

    def __init__(self, *steps):
        self.steps: list[Callable[[dict], dict | None]] = [
            s for group in steps for s in (group.steps if isinstance(group, Compose) else [group])
        ]

    def __call__(self, data: dict) -> dict:
        for step in self.steps:
            result = step(data)
            data = data if result is None else result
        return data


class Lambda(Step):
    """Any function of one value, for the odd step that needs no class of its own."""

    def __init__(self, function, key: str = "images", out: str | None = None):
        super().__init__(key, out)
        self.function = function

    def apply(self, value):
        return self.function(value)


def array_of(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)
