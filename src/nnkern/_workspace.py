"""What every part of the network API shares: the dtypes a model computes in, shape
formatting for error messages, and the reused work arrays (:class:`Buffers`) that layers,
losses and models keep per batch size."""

from __future__ import annotations

import numpy as np

from . import _arrays

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
SIZES_KEPT = 3  # workspaces kept per buffer: full batch, last short batch, evaluation chunk


def shape_str(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def check_dtype(dtype, where: str) -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in DTYPES:
        raise ValueError(f"{where}: dtype must be float32 or float64, got {dtype}")
    return dtype


class Buffers:
    """Named work arrays, one per (name, shape), keeping the last few shapes of each name."""

    def __init__(self):
        self._arrays = {}

    def get(self, name: str, shape: tuple, dtype: np.dtype, backend: str):
        key = (name, shape, dtype)
        array = self._arrays.get(key)
        if array is None:
            same_name = [k for k in self._arrays if k[0] == name]
            if len(same_name) >= SIZES_KEPT:
                del self._arrays[same_name[0]]
            array = self._arrays[key] = _arrays.empty(shape, dtype, backend)
        return array

    def clear(self) -> None:
        self._arrays.clear()

