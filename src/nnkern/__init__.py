"""nnkern: neural networks on NumPy arrays with hand-written Cython, Numba and CUDA kernels::

    import nnkern
    nnkern.available_backends()        # e.g. ['numpy', 'cython', 'numba']
    with nnkern.use_backend("cython"):
        loss, dlogits = nnkern.ops.softmax_cross_entropy(logits, labels)

Submodules: ``ops`` (kernels on arrays), ``nn`` (layers, Sequential and Graph models, losses),
``optim`` (optimizers and learning-rate schedules), ``callbacks`` (early stopping,
best-weights restore), ``data`` (MNIST and a DataLoader), ``grad`` (numerical gradients),
``sklearn`` (scikit-learn estimators; needs the ``[sklearn]`` extra), ``interop`` (ONNX
export, PyTorch modules both ways; the ``[onnx]`` and ``[torch]`` extras), ``training``
(the training loop and its engines).
"""

from __future__ import annotations

from ._backend import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    set_backend,
    unavailable_reason,
    use_backend,
)
from ._threads import OversubscriptionWarning, get_num_threads, set_num_threads, thread_budget
from . import ops

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
    "unavailable_reason",
    "get_num_threads",
    "set_num_threads",
    "thread_budget",
    "OversubscriptionWarning",
    "ops",
    "__version__",
]


def __getattr__(name):
    # the submodules are imported on first use so that `import nnkern` stays light.
    if name in ("nn", "optim", "callbacks", "data", "grad", "sklearn", "interop", "training", "engine"):
        import importlib

        return importlib.import_module(f"nnkern.{name}")
    raise AttributeError(f"module 'nnkern' has no attribute {name!r}")
