"""A save killed mid-write leaves the previous file intact (model.save writes a temporary
file and renames it over the target only when complete)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np

from nnkern import nn

SAVER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from nnkern import nn

    model = nn.Sequential(nn.Linear(30, 20, seed=2), nn.ReLU(), nn.Linear(20, 5, seed=3), backend="numpy")

    def savez_then_hang(f, **arrays):
        f.write(b"PK\\x03\\x04 half of a zip file")  # the start of the new file...
        f.flush()
        print("writing", flush=True)                # ...then the process is killed
        time.sleep(60)

    np.savez = savez_then_hang
    model.save(sys.argv[1])
""")


def test_killed_save_keeps_the_previous_file(tmp_path):
    target = tmp_path / "model.npz"
    original = nn.Sequential(nn.Linear(30, 20, seed=0), nn.ReLU(), nn.Linear(20, 5, seed=1), backend="numpy")
    original.save(target)
    before = target.read_bytes()

    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline().strip() == "writing"
        saver.send_signal(signal.SIGKILL)
    finally:
        saver.wait(timeout=60)
    assert saver.returncode == -signal.SIGKILL

    assert target.read_bytes() == before
    restored = nn.load(target, backend="numpy")
    for got, want in zip(restored.parameters(), original.parameters()):
        np.testing.assert_array_equal(got, want)
