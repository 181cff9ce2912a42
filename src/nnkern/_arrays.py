"""Where a model's arrays live: host NumPy arrays, or device arrays for the "cuda" backend.

The network and optimizer code only allocates, fills and reads back arrays through these
helpers, so the same code serves host and device storage. Device arrays (Numba CUDA) support
``a[...] = value`` (a scalar or a host array) and ``a.copy_to_host()``.
"""

from __future__ import annotations

import numpy as np

from ._backend import backend_module

# Backends whose models keep parameters and workspaces in device memory.
DEVICE_BACKENDS = frozenset({"cuda"})


def is_device_array(a) -> bool:
    return hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray)


def to_host(a) -> np.ndarray:
    """``a`` as a host array: device arrays are copied, host arrays returned as they are."""
    return a.copy_to_host() if is_device_array(a) else a


def host_copy(a) -> np.ndarray:
    """A host array holding a copy of ``a`` (host or device), never a view of it."""
    return a.copy_to_host() if is_device_array(a) else np.array(a, copy=True)


def empty(shape, dtype, backend: str):
    """An uninitialised array of ``shape`` in the memory ``backend`` computes on."""
    if backend in DEVICE_BACKENDS:
        return backend_module(backend).device_empty(tuple(shape), np.dtype(dtype))
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype, backend: str):
    a = empty(shape, dtype, backend)
    a[...] = 0
    return a


def from_host(values, dtype, backend: str):
    """A copy of the host array ``values`` (cast to ``dtype``) in ``backend``'s memory."""
    values = np.array(values, dtype=dtype, order="C", copy=True)
    if backend not in DEVICE_BACKENDS:
        return values
    a = empty(values.shape, dtype, backend)
    a[...] = values
    return a
