"""Framework adapters: a loaded model with one `predict(array)`, whole-volume or by sliding windows.

Import the adapter you need (`tomaat.frameworks.tensorflow`, `tomaat.frameworks.pytorch`);
this package imports neither framework, so an app pays only for the one it uses.
"""

from .base import Model, Predict
from .sliding import gaussian_weight, positions, sliding_window, sliding_windows

__all__ = ["Model", "Predict", "gaussian_weight", "positions", "sliding_window", "sliding_windows"]
