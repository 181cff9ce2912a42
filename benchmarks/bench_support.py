"""What the benchmark modules share: the contenders, the thread count, the validation.

* One thread count for every pool, nnkern's and PyTorch's: ``$NNKERN_BENCH_THREADS``, else
  nnkern's default (the number of cores); conftest.py applies it and records it in the
  JSON's machine_info.
* ``CONTENDERS``: the nnkern backends worth timing here (cuda only on a real GPU), reference
  first; peers (``np.matmul``, ``torch``) are added per kernel where they mean something.
* ``assert_matches``: every benchmark validates its contender's result against the NumPy
  reference before timing it.
"""

from __future__ import annotations

import os

import numpy as np

import nnkern
from nnkern import bench

torch = bench.import_torch()  # None: the torch peers are skipped

CONTENDERS, SKIPPED = bench.benchmark_backends()
REFERENCE = "numpy"
THREADS = int(os.environ.get("NNKERN_BENCH_THREADS", nnkern.get_num_threads()))

# float32 results of a different summation order than the reference's: loose enough for
# any correct kernel, tight enough that a wrong index or a missing term fails.
RTOL = 1e-4


def assert_matches(actual, expected, what: str, rtol: float = RTOL) -> None:
    """``actual`` equals ``expected`` within ``rtol`` relative to the largest |expected|."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale,
                               err_msg=f"{what}: result differs from the NumPy reference")


def contenders(*peers):
    """The nnkern backends plus the named peers available here (torch may be missing)."""
    return [*CONTENDERS, *(p for p in peers if p != "torch" or torch is not None)]
