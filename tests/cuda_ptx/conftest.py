"""tests/cuda_ptx: every CUDA kernel compiled to PTX by the real CUDA compiler (NVVM), with
no GPU needed; the simulator (tests/cuda) runs kernels in Python and type-checks nothing.

    pytest -p no:cacheprovider tests/cuda_ptx      # its own process, WITHOUT NUMBA_ENABLE_CUDASIM

Needs NVVM from numba-cuda's cu13 extra (pip install 'nnkern[cuda]'); without it the
tests fail, they do not skip.
"""

from __future__ import annotations

import numba
import pytest

if numba.config.ENABLE_CUDASIM:
    pytest.exit(
        "tests/cuda_ptx compiles with the real CUDA target: run it in its own process without "
        "NUMBA_ENABLE_CUDASIM (the simulator is for tests/cuda)",
        returncode=pytest.ExitCode.USAGE_ERROR,
    )
