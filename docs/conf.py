"""Sphinx configuration: the API reference from nnkern's docstrings, and the README's
Python examples as pages whose code the doctest builder runs.

    pip install ".[docs]"
    sphinx-build -W -b html docs docs/_build/html      # the reference, warnings as errors
    sphinx-build -W -b doctest docs docs/_build/doctest  # run the README's examples

(tests/test_docs.py runs both.)
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = Path(__file__).resolve().parent / "_generated"

project = "nnkern"
author = "the nnkern developers"
copyright = "the nnkern developers (MIT license)"  # noqa: A001 (Sphinx's name)

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.doctest"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []

autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autodoc_class_signature = "separated"
napoleon_numpy_docstring = True
napoleon_google_docstring = False

# Optional dependencies that are not installed are mocked, so the reference builds
# without them (their modules are only imported, not run, by autodoc).
OPTIONAL = ("sklearn", "matplotlib", "torch")


def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):  # a broken or hidden install
        return True


autodoc_mock_imports = [name for name in OPTIONAL if _missing(name)]

# The README's ```python blocks, each under the heading it follows, as testcode blocks.
_FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
_HEADING = re.compile(r"^(#{2,3}) (.+)$", re.M)


def readme_examples_page(readme: Path) -> str:
    """The reStructuredText of docs/_generated/readme_examples.rst: every ```python block
    of README.md under its section's title, run by ``sphinx-build -b doctest`` (in a
    temporary folder, so the files the examples write go there; MNIST is the repository's
    data/mnist unless NNKERN_DATA says otherwise)."""
    text = readme.read_text()
    lines = ["README examples", "===============", "",
             "The Python examples of the README, as the doctest builder runs them.", "",
             ".. testsetup:: *", "", "   import os, tempfile", "   _cwd = os.getcwd()",
             f"   os.environ.setdefault('NNKERN_DATA', {str(readme.parent / 'data' / 'mnist')!r})",
             "   os.chdir(tempfile.mkdtemp(prefix='nnkern-docs-'))", "",
             ".. testcleanup:: *", "", "   os.chdir(_cwd)", ""]
    headings = [(m.start(), m.group(2)) for m in _HEADING.finditer(text)]
    for number, block in enumerate(_FENCE.finditer(text), 1):
        title = next((t for start, t in reversed(headings) if start < block.start()), "Example")
        code = [f"   {line}" if line else "" for line in block.group(1).splitlines()]
        # shown as it is; run with a last line, so that whatever the example prints before it
        # (fit's epoch lines, or nothing) matches the expected "...example finished"
        lines += [title, "-" * len(title), "", ".. code-block:: python", "", *code, "",
                  f".. testcode:: readme-{number}", "   :hide:", "", *code, "   print('example finished')", "",
                  f".. testoutput:: readme-{number}", "   :hide:", "   :options: +ELLIPSIS", "",
                  "   ...example finished", ""]
    return "\n".join(lines)


GENERATED.mkdir(exist_ok=True)
_page = GENERATED / "readme_examples.rst"
_content = readme_examples_page(ROOT / "README.md")
if not _page.exists() or _page.read_text() != _content:  # unchanged: Sphinx keeps its cache
    _page.write_text(_content)

try:  # the installed nnkern (with its compiled backends), which the README examples run on
    import nnkern  # noqa: F401
except ImportError:  # without an installed nnkern, autodoc reads the sources
    sys.path.insert(0, str(ROOT / "src"))
