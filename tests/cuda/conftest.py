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


@pytest.fixture
def device_epochs(monkeypatch):
    """A list that receives the number of batches of every epoch the cuda engine trains on
    the device (its step's run_epoch), for the tests that fit must go through it."""
    from nnkern import engine

    epochs = []
    make_step = engine._cuda_step

    def counting_step(*args):
        step = make_step(*args)
        run_epoch = step.run_epoch
        step.run_epoch = lambda loader, **kw: epochs.append(len(loader)) or run_epoch(loader, **kw)
        return step

    monkeypatch.setattr(engine, "_cuda_step", counting_step)
    return epochs
