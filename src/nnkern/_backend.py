"""Backend selection: which kernel set ``nnkern.ops`` calls.

Backends are modules named by convention (``nnkern.backends.<name>_backend``), imported
lazily on first use, and never silently replaced: asking for one that cannot run here
raises :class:`BackendUnavailableError` saying why.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import threading
from types import ModuleType

from .backends import BACKENDS, KERNELS

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
    "backend_module",
    "unavailable_reason",
    "fastest_cpu_backend",
]


class BackendUnavailableError(RuntimeError):
    """A known backend cannot run on this machine (the message says why)."""


_modules: dict[str, ModuleType] = {}
_failures: dict[str, str] = {}
_lock = threading.Lock()
_default: str | None = None  # set_backend(): the process's default, seen by every thread
# use_backend(): an override for the current context (a thread, or an asyncio task)
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("nnkern_backend", default=None)
_FASTEST_CPU_FIRST = ("cython", "numba", "numpy")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; nnkern knows {', '.join(BACKENDS)}")
    return name


def _load(name: str) -> ModuleType | None:
    with _lock:
        if name in _modules:
            return _modules[name]
        if name in _failures:
            return None
        try:
            module = importlib.import_module(f"nnkern.backends.{name}_backend")
            check = getattr(module, "check_usable", None)
            if check is not None:
                check()
            missing = [k for k in KERNELS if not callable(getattr(module, k, None))]
            if missing:
                raise ImportError(f"backend module lacks kernels {missing}")
        except Exception as exc:  # any failure means "not usable here", with the reason kept
            _failures[name] = f"{type(exc).__name__}: {exc}"
            return None
        _modules[name] = module
        return module


def backend_module(name: str | None = None) -> ModuleType:
    """The kernel module of backend ``name`` (None: the current backend)."""
    name = _check_name(get_backend() if name is None else name)
    module = _load(name)
    if module is None:
        raise BackendUnavailableError(f"backend {name!r} is not usable here: {_failures[name]}")
    return module


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None when it can."""
    _check_name(name)
    return None if _load(name) is not None else _failures[name]


def available_backends() -> list[str]:
    """The backends usable on this machine, in order: numpy, cython, numba, cuda."""
    return [name for name in BACKENDS if _load(name) is not None]


def fastest_cpu_backend() -> str:
    """The fastest backend usable here on the CPU: cython, else numba, else numpy."""
    return next(name for name in _FASTEST_CPU_FIRST if name == "numpy" or _load(name) is not None)


def get_backend() -> str:
    """The current backend: the innermost ``use_backend`` block of this thread (or asyncio
    task), else the process's default set by ``set_backend``, else $NNKERN_BACKEND, else
    the fastest usable CPU backend."""
    name = _override.get() or _default
    if name is None:
        name = os.environ.get("NNKERN_BACKEND") or fastest_cpu_backend()
    return name


def set_backend(name: str) -> None:
    """Make ``name`` the process's default backend, for every thread (a ``use_backend``
    block in force in some thread still wins there); raises if it is unknown or not usable
    here."""
    global _default
    backend_module(name)
    _default = name


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("cython"): ...`` runs the block on that backend. The override
    holds in the current context only: this thread (or asyncio task) until the block ends;
    other threads keep the process's default. A thread started inside the block does not
    inherit it (``contextvars.copy_context().run`` passes it on)."""
    backend_module(name)
    token = _override.set(name)
    try:
        yield name
    finally:
        _override.reset(token)
