"""tests/cuda: the "cuda" backend against the NumPy reference, in a pytest process of its own.

    NUMBA_ENABLE_CUDASIM=1 pytest -p no:cacheprovider tests/cuda   # no GPU: Numba's CUDA simulator
    pytest -p no:cacheprovider tests/cuda                           # on a machine with a GPU

The simulator replaces numba.cuda for the whole process, so these tests never share a
process with the rest of the suite (tests/conftest.py leaves this folder out). Run
without a GPU and without the simulator they stop the run with an error: skipping would
let CI pass without testing a kernel.
"""

from __future__ import annotations

import pytest

import nnkern

_reason = nnkern.unavailable_reason("cuda")
if _reason is not None:
    pytest.exit(
        "tests/cuda cannot run: the 'cuda' backend is unavailable "
        f"({_reason}). Run them as `NUMBA_ENABLE_CUDASIM=1 pytest tests/cuda` "
        "(its own process) or on a machine with a CUDA GPU.",
        returncode=pytest.ExitCode.USAGE_ERROR,
    )
