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

# The docstrings' examples run in this namespace (one fresh copy per document).
# Names the examples may use without defining them:
#   jax, jnp, np, optax, functools, jaxrnn and every public jaxrnn name;
#   key; params (I=3, H=5, O=2, one layer); xs [T=6, B=4, I=3]; targets [T, B]
#   (classes 0, 1); batch = Batch(xs, targets) (no lengths, so it is also a
#   stream for truncated BPTT); lengths [B] = [6, 5, 2, 1]; optimizer (Adam
#   1e-2, clipped at 1) and opt_state = optimizer.init(params);
#   seq [T, I] (one sequence, for gradient_flow); char_params (I = O = 5, for
#   generate); torch (None when torch is not installed).
doctest_global_setup = """
import functools
import jax
import jax.numpy as jnp
import numpy as np
import optax
import jaxrnn
from jaxrnn import *
key = jax.random.key(0)
params = jaxrnn.init_params(key, 3, 5, 2)
xs = jax.random.normal(key, (6, 4, 3))
targets = jax.random.randint(key, (6, 4), 0, 2)
batch = jaxrnn.Batch(xs, targets)
lengths = jnp.array([6, 5, 2, 1])
optimizer = jaxrnn.make_optimizer("adam", 1e-2, clip_norm=1.0)
opt_state = optimizer.init(params)
seq = xs[:, 0]
char_params = jaxrnn.init_params(key, 5, 8, 5)
try:
  import torch
except ImportError:
  torch = None
"""


def separate_examples(app, what, name, obj, options, lines):  # pylint: disable=unused-argument
  """Turns each docstring's ``>>>`` examples into a doctest group of their own.

  Without this, every example of a page shares one namespace, so an example
  that defines ``params`` changes what the next docstring's example sees. Each
  group starts from ``doctest_global_setup``; the examples of one docstring
  share their group, in order.
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
