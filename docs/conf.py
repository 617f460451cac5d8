"""Sphinx configuration: the user guide (MyST pages) and the API reference (autodoc).

Build, from the repository root (``pip install -e ".[docs]"`` first)::

    python -m sphinx -W --keep-going -b html docs /tmp/docs-html
    python -m sphinx -W -b doctest docs /tmp/docs-doctest
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the checkout, not whatever jaxrnn is installed

project = "jaxrnn"
author = "the jaxrnn authors"
copyright = "the jaxrnn authors"  # pylint: disable=redefined-builtin
try:
  from jaxrnn import __version__ as release  # pylint: disable=wrong-import-position
except Exception:  # pylint: disable=broad-except  # autodoc reports the import error itself
  release = "unknown"
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# _generated/ holds the benchmark tables that benchmarks/report.py writes; the
# pages pull them in with {include}, so they are not documents of their own.
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]

nitpicky = False
html_theme = "alabaster"
html_title = f"jaxrnn {release}"

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# No doctest_global_setup: every example starts from what a fresh interpreter has
# (nothing) and imports and builds what it uses, so it runs as pasted
# (tests/test_examples.py checks that it names nothing it does not define).


def separate_examples(app, what, name, obj, options, lines):  # pylint: disable=unused-argument
  """Turns each docstring's ``>>>`` examples into a doctest group of their own.

  Without this, every example of a page shares one namespace, so an example
  that defines ``params`` changes what the next docstring's example sees. Each
  group starts empty, as a fresh interpreter does; the examples of one
  docstring share their group, in order.
  """
  out, i = [], 0
  while i < len(lines):
    line = lines[i]
    if not line.lstrip().startswith(">>>"):
      out.append(line)
      i += 1
      continue
    indent = line[:len(line) - len(line.lstrip())]
    block = []
    while i < len(lines) and lines[i].strip():
      block.append(lines[i][len(indent):])
      i += 1
    if out and out[-1].strip():
      out.append("")
    out += [f"{indent}.. doctest:: {name}", ""] + [f"{indent}   {b}" for b in block] + [""]
  lines[:] = out


def setup(app):
  app.connect("autodoc-process-docstring", separate_examples, priority=600)  # after napoleon
