"""Steps that change the grid: each returns its record so `Restore` lands on the input's exact grid."""

from __future__ import annotations

import SimpleITK as sitk

from .pipeline import GeometryStep, Grid


def _resample(image: sitk.Image, grid: Grid, interpolator: int, default: float = 0.0) -> sitk.Image:
    out = sitk.Resample(image, grid.reference(), sitk.Transform(), interpolator, default, image.GetPixelID())
    return grid.stamp(out)


class Resample(GeometryStep):
    """Resample to the spacing a model was trained at, keeping origin, direction and physical extent.

    The inverse resamples onto the recorded input grid itself, not onto a grid
    recomputed from spacings, so rounding in the forward size cannot shift it.
    """

    def __init__(self, spacing, interpolator=sitk.sitkLinear, default: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.spacing = tuple(float(s) for s in spacing)
        self.interpolator = interpolator
        self.default = default

    def forward(self, image):
        before = Grid.of(image)
        size = tuple(
            max(1, int(round(n * s / t)))
            for n, s, t in zip(image.GetSize(), image.GetSpacing(), self.spacing, strict=True)
        )
        target = Grid(size, self.spacing, image.GetOrigin(), image.GetDirection())
        return _resample(image, target, self.interpolator, self.default), before

    def inverse(self, image, before, interpolator):
        return _resample(image, before, interpolator, self.default)


class Reorient(GeometryStep):
    """Permute and flip axes to a canonical orientation (LPS: identity direction for axis-aligned scans).

    Only permutations and flips: no interpolation, so the inverse is exact voxel for voxel.
    """

    def __init__(self, orientation: str = "LPS", **kwargs):
        super().__init__(**kwargs)
        self.orientation = orientation

    def forward(self, image):
        before = Grid.of(image)
        code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
        return sitk.DICOMOrient(image, self.orientation), (before, code)

    def inverse(self, image, record, interpolator):
        before, code = record
        return before.stamp(sitk.DICOMOrient(image, code))


class _ToMultiple(GeometryStep):
    """Shared by pad and crop: networks that pool k times need sizes divisible by 2**k."""

    def __init__(self, multiple, value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.multiple = multiple
        self.value = value

    def _multiples(self, image):
        m = self.multiple
        return m if isinstance(m, (tuple, list)) else (m,) * image.GetDimension()


class PadToMultiple(_ToMultiple):
    """Pad (split evenly before and after) up to a multiple of N; the inverse crops it away."""

    def forward(self, image):
        before = Grid.of(image)
        total = [(-n) % m for n, m in zip(image.GetSize(), self._multiples(image), strict=True)]
        lower = [t // 2 for t in total]
        upper = [t - lo for t, lo in zip(total, lower, strict=True)]
        padded = sitk.ConstantPad(image, lower, upper, self.value) if any(total) else image
        return padded, (before, lower, upper)

    def inverse(self, image, record, interpolator):
        before, lower, upper = record
        return before.stamp(sitk.Crop(image, lower, upper) if any(lower + upper) else image)


class CropToMultiple(_ToMultiple):
    """Crop (evenly) down to a multiple of N; the inverse pads back with `value`."""

    def forward(self, image):
        before = Grid.of(image)
        total = [n % m for n, m in zip(image.GetSize(), self._multiples(image), strict=True)]
        lower = [t // 2 for t in total]
        upper = [t - lo for t, lo in zip(total, lower, strict=True)]
        cropped = sitk.Crop(image, lower, upper) if any(total) else image
        return cropped, (before, lower, upper)

    def inverse(self, image, record, interpolator):
        before, lower, upper = record
        return before.stamp(sitk.ConstantPad(image, lower, upper, self.value) if any(lower + upper) else image)


class CropOrPad(GeometryStep):
    """Fix the size exactly (centred), for models with a fixed input; the inverse undoes both parts."""

    def __init__(self, size, value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(size)
        self.value = value

    def forward(self, image):
        before = Grid.of(image)
        diff = [t - n for n, t in zip(image.GetSize(), self.size, strict=True)]
        pad_lo = [max(d, 0) // 2 for d in diff]
        pad_hi = [max(d, 0) - p for d, p in zip(diff, pad_lo, strict=True)]
        crop_lo = [max(-d, 0) // 2 for d in diff]
        crop_hi = [max(-d, 0) - c for d, c in zip(diff, crop_lo, strict=True)]
        out = sitk.Crop(image, crop_lo, crop_hi) if any(crop_lo + crop_hi) else image
        out = sitk.ConstantPad(out, pad_lo, pad_hi, self.value) if any(pad_lo + pad_hi) else out
        return out, (before, pad_lo, pad_hi, crop_lo, crop_hi)

    def inverse(self, image, record, interpolator):
        before, pad_lo, pad_hi, crop_lo, crop_hi = record
        out = sitk.Crop(image, pad_lo, pad_hi) if any(pad_lo + pad_hi) else image
        out = sitk.ConstantPad(out, crop_lo, crop_hi, self.value) if any(crop_lo + crop_hi) else out
        return before.stamp(out)
