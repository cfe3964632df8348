"""`ArrayOps` for numpy arrays (ONNX Runtime backends, tests); no torch needed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class NumpyOps:
    """Host float32 arrays: the latent dtype is float32 and there is no device to copy to."""

    def from_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, dtype=np.float32)  # a copy: callers may reuse their buffer

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, dtype=np.float32)

    def concat(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(list(arrays), axis=0)

    def clip(self, array: np.ndarray, low: float, high: float) -> np.ndarray:
        return np.clip(array, low, high)
