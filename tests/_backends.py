"""The backends the CPU tests run on."""

import nnkern

# cuda is tested in its own process under the simulator (tests/cuda)
FAST_CPU_BACKENDS = [b for b in nnkern.available_backends() if b not in ("numpy", "cuda")]
