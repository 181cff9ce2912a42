"""The API reference (docs/, Sphinx) builds without a warning, also without the optional
dependencies, and the README's Python examples run (Sphinx's doctest builder)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("sphinx")

DOCS = Path(__file__).resolve().parents[1] / "docs"

# Runs Sphinx with some modules made unimportable, as on a machine without those extras.
SPHINX_WITHOUT = textwrap.dedent("""
    import sys
    from importlib.abc import MetaPathFinder

    hidden = set(sys.argv[1].split(","))

    class Hide(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in hidden:
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, Hide())
    from sphinx.cmd.build import main
    sys.exit(main(sys.argv[2:]))
""")


def sphinx(builder: str, out: Path, hide: str = "") -> subprocess.CompletedProcess:
    args = ["-W", "--keep-going", "-q", "-E", "-b", builder, str(DOCS), str(out)]
    return subprocess.run([sys.executable, "-c", SPHINX_WITHOUT, hide, *args], capture_output=True, text=True,
                          timeout=600)


def test_the_api_reference_builds_without_warnings(tmp_path):
    result = sphinx("html", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    reference = {page: (tmp_path / "api" / f"{page}.html").read_text() for page in ("optim", "sklearn", "ops")}
    assert 'id="nnkern.optim.AdamW"' in reference["optim"]
    assert 'id="nnkern.optim.CosineAnnealingLR"' in reference["optim"]
    assert 'id="nnkern.sklearn.MLPClassifier.partial_fit"' in reference["sklearn"]
    assert 'id="nnkern.ops.adamw_update"' in reference["ops"]


def test_the_reference_builds_without_the_optional_dependencies(tmp_path):
    result = sphinx("html", tmp_path, hide="sklearn,matplotlib,torch")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MLPClassifier" in (tmp_path / "api" / "sklearn.html").read_text()


def test_the_readme_examples_run(tmp_path):
    result = sphinx("doctest", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (tmp_path / "output.txt").read_text()
    assert "0 failures in tests" in summary
    readme_blocks = (DOCS.parent / "README.md").read_text().count("```python")
    assert f"{readme_blocks} tests" in summary
