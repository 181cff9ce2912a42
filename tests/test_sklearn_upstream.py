"""scikit-learn's own tests of its MLP estimators, run on nnkern's.

The test file is taken from the installed scikit-learn at test time (never copied into
this repository): ``sklearn/neural_network/tests/test_mlp.py`` with its import line
swapped for ``from nnkern.sklearn import MLPClassifier, MLPRegressor``. It runs once, in a
pytest process of its own (with scikit-learn's conftest as a plugin, for its
``global_random_seed`` fixture); each of its test functions is then one test here, which
fails with the upstream failure's text.

Deselected: the tests that read or write scikit-learn's private attributes, each named
with the attribute it needs. (``_no_improvement_count``, the stopping rule's counter,
exists here under scikit-learn's name and meaning, so test_n_iter_no_change and
test_n_iter_no_change_inf run.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sklearn = pytest.importorskip("sklearn")

UPSTREAM = Path(sklearn.__file__).parent / "neural_network" / "tests" / "test_mlp.py"
UPSTREAM_IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"
NNKERN_IMPORT = "from nnkern.sklearn import MLPClassifier, MLPRegressor"

# upstream test -> the private attribute of scikit-learn's estimators it needs
DESELECTED = {
    "test_gradient": "_loss_grad_lbfgs (the packed loss-and-gradient function of lbfgs)",
    "test_learning_rate_warmstart": "_optimizer.learning_rate (the SGD optimizer object)",
    "test_adaptive_learning_rate": "_optimizer.learning_rate (the SGD optimizer object)",
}


def _upstream_text() -> str:
    if not UPSTREAM.is_file():
        pytest.skip(f"the installed scikit-learn has no {UPSTREAM}")
    return UPSTREAM.read_text()


def _upstream_tests() -> list[str]:
    if not UPSTREAM.is_file():
        return []
    return re.findall(r"^def (test_\w+)\(", UPSTREAM.read_text(), flags=re.MULTILINE)


@pytest.fixture(scope="module")
def upstream_results(tmp_path_factory) -> dict[str, list[tuple[str, str | None]]]:
    """{upstream test function: [(test id, failure text or None), ...]} from one run."""
    text = _upstream_text()
    if text.count(UPSTREAM_IMPORT) != 1:
        pytest.fail(f"{UPSTREAM} no longer imports the estimators with {UPSTREAM_IMPORT!r}; update this harness")
    folder = tmp_path_factory.mktemp("sklearn_upstream")
    (folder / "test_mlp_nnkern.py").write_text(text.replace(UPSTREAM_IMPORT, NNKERN_IMPORT))
    report = folder / "report.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "sklearn.conftest",
               f"--junitxml={report}", "--rootdir", str(folder), str(folder / "test_mlp_nnkern.py"),
               *(arg for name in DESELECTED for arg in ("--deselect", f"test_mlp_nnkern.py::{name}"))]
    run = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=os.environ.copy(), timeout=1800)
    if not report.is_file():
        pytest.fail(f"the upstream run wrote no report:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    results: dict[str, list[tuple[str, str | None]]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name")
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if case.find("skipped") is not None:
            problem_text = f"skipped: {case.find('skipped').get('message')}"
        else:
            problem_text = None if problem is None else (problem.get("message", "") + "\n" + (problem.text or ""))
        results.setdefault(name.split("[")[0], []).append((name, problem_text))
    return results


@pytest.mark.parametrize("name", [n for n in _upstream_tests() if n not in DESELECTED])
def test_upstream(name, upstream_results):
    cases = upstream_results.get(name)
    assert cases, f"{name} did not run upstream"
    failed = [(case, problem) for case, problem in cases if problem is not None]
    assert not failed, "\n\n".join(f"{case}:\n{problem[-3000:]}" for case, problem in failed)


def test_the_deselected_tests_exist_upstream():
    """A deselection names a test that is still there (else it deselects nothing)."""
    _upstream_text()
    assert set(DESELECTED) <= set(_upstream_tests())
