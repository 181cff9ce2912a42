"""benchmarks/device_check.sh --dry-run: the GPU check runs end to end without a GPU (Numba's
CUDA simulator, tiny sizes), so that it is known to work before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numba
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not numba.config.ENABLE_CUDASIM,
                    reason="on a GPU the check itself runs (benchmarks/device_check.sh), not its dry run")
def test_the_dry_run_runs_every_part(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--dry-run", "--no-install",
                           "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert result["dry_run"] and result["schema"] == "nnkern-device-check/1"
    parts = result["parts"]
    assert {name: part["status"] for name, part in parts.items()} == {
        "mnist": "ok", "gemm": "ok", "cuda-tests": "passed", "cpu-scaling": "ok",
        "torch-compile": parts["torch-compile"]["status"]}
    assert parts["torch-compile"]["status"].startswith("not available")

    mnist = {(row["network"], row["contender"]): row for row in parts["mnist"]["results"]}
    for network in ("24-12-10 sigmoid", "24-16-12-10 relu"):
        assert mnist[network, "nnkern cuda (persistent)"]["status"] == "ok"
        assert mnist[network, "torch eager"]["status"].startswith("not available")
    ours = [mnist["24-12-10 sigmoid", f"nnkern cuda ({executor})"] for executor in ("persistent", "launches")]
    assert [row["executor"] for row in ours] == ["persistent", "launches"]
    # the same weights, data and order: both executors train alike
    assert ours[1]["status"] == "ok" and ours[0]["epoch_losses"] == ours[1]["epoch_losses"]
    for row in parts["gemm"]["results"]:
        assert row["relative_error"] < 1e-5 and row["unwritten"] == 0
        assert row["cublas"]["status"].startswith("not available")
    runs = parts["cpu-scaling"]["runs"]
    assert [run["threads"] for run in runs] == [t for t in (1, 2) if t <= parts["cpu-scaling"]["cores"]]
    assert all(run["status"] == "ok" for run in runs)
    assert {row["contender"] for row in parts["cpu-scaling"]["results"]} == {"numpy"}

    report = (tmp_path / "device_check.md").read_text()
    assert report.startswith("# nnkern device check (DRY RUN") and "| what | measured | target |" in report
