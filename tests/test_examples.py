"""Every public function has an example, and every example runs as pasted into a fresh interpreter.

Checked statically (``ast`` over the source, nothing of jaxrnn imported): the functions and
the classes a user builds that ``jaxrnn/__init__.py`` exports, and the layer classes of
:mod:`jaxrnn.nnx` and :mod:`jaxrnn.equinox`, each have a ``>>>`` example in their docstring;
each docstring's examples use only the names they bind themselves (imports included) and
Python's builtins; and the docs' doctest build gives them nothing more (``docs/conf.py`` sets
no ``doctest_global_setup``), so what ``sphinx -b doctest`` runs is what a user pastes.
"""

from __future__ import annotations

import ast
import builtins
import doctest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jaxrnn"
LAYER_CLASSES = (("nnx", "RNN"), ("equinox", "RNN"))
"""The public classes of the optional layer modules, imported on their own (not from jaxrnn)."""
RETURNED = {"RNNParams", "CellParams", "Outputs", "FitResult", "TBPTTResult", "GradientFlow",
            "TimeSplit", "SplitStats"}
"""Exported classes a user gets from a function (whose example shows them) rather than builds."""


def definitions(module: str) -> dict[str, ast.AST]:
  """The top-level functions and classes of ``jaxrnn/<module>.py``, by name."""
  tree = ast.parse((PACKAGE / f"{module}.py").read_text())
  return {node.name: node for node in tree.body
          if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def exported() -> dict[str, ast.AST]:
  """What ``jaxrnn/__init__.py`` imports from its modules, each name with its definition."""
  found = {}
  for node in ast.parse((PACKAGE / "__init__.py").read_text()).body:
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxrnn."):
      where = definitions(node.module.removeprefix("jaxrnn."))
      for alias in node.names:
        assert alias.name in where, f"{node.module}.{alias.name} is not defined there"
        found[alias.asname or alias.name] = where[alias.name]
  return found


def undefined_names(docstring: str) -> list[str]:
  """The names, sorted, that the ``>>>`` examples of ``docstring`` use before binding them
  (builtins aside), in a namespace that starts empty."""
  bound, missing = set(dir(builtins)), set()
  for example in doctest.DocTestParser().get_examples(docstring):
    tree = ast.parse(example.source)
    binds, loads = set(), []
    for node in ast.walk(tree):
      if isinstance(node, ast.Name):
        (loads.append(node.id) if isinstance(node.ctx, ast.Load) else binds.add(node.id))
      elif isinstance(node, (ast.Import, ast.ImportFrom)):
        binds.update(alias.asname or alias.name.partition(".")[0] for alias in node.names)
      elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        binds.add(node.name)
      elif isinstance(node, ast.arg):
        binds.add(node.arg)
    missing.update(name for name in loads if name not in bound | binds)
    bound |= binds
  return sorted(missing)


def docstrings() -> list[tuple[str, str]]:
  """``(where, docstring)`` of every module, class and function of the library with examples."""
  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        text = ast.get_docstring(node, clean=True)
        if text and ">>>" in text:
          found.append((f"{path.relative_to(ROOT)}:{getattr(node, 'name', '<module>')}", text))
  return found


def test_the_checks_see_the_package():
  names = exported()
  assert {"bptt", "unroll", "make_optimizer", "to_torch", "Batch"} <= set(names)
  assert isinstance(names["bptt"], ast.FunctionDef) and isinstance(names["Batch"], ast.ClassDef)
  assert len(docstrings()) >= 20


@pytest.mark.parametrize("example,missing", [
    (">>> grads = jaxrnn.bptt(params, batch)", ["batch", "jaxrnn", "params"]),
    (">>> import jax, jaxrnn\n>>> jaxrnn.init_params(key, 3, 5, 2)", ["key"]),
    (">>> import jax.numpy as jnp\n>>> jax.numpy.ones(3)", ["jax"]),
    (">>> y = x + 1\n>>> x = 2", ["x"]),                         # used before it is bound
    (">>> import jax.numpy as jnp\n>>> f = lambda a: jnp.sum(a)\n>>> [f(v) for v in (1, 2)]\n"
     "[...]\n>>> len(sorted({'a': 1}))\n1", []),
    (">>> import jaxrnn.nnx\n>>> from flax import nnx\n>>> jaxrnn.nnx.RNN(3, 5, rngs=nnx.Rngs(0))",
     []),
])
def test_undefined_names_finds_what_an_example_does_not_define(example, missing):
  assert undefined_names(f"Example:\n  {example.replace(chr(10), chr(10) + '  ')}\n") == missing


def test_every_public_function_and_class_has_an_example():
  assert RETURNED <= set(exported())
  targets = {name: node for name, node in exported().items() if name not in RETURNED}
  targets.update({f"{module}.{name}": definitions(module)[name] for module, name in LAYER_CLASSES})
  missing = [name for name, node in targets.items() if ">>>" not in (ast.get_docstring(node) or "")]
  assert len(targets) >= 27 and not missing, f"no >>> example: {missing}"


@pytest.mark.parametrize("where,text", [pytest.param(where, text, id=where)
                                        for where, text in docstrings()])
def test_every_example_defines_what_it_uses(where, text):
  assert not undefined_names(text), f"{where} uses {undefined_names(text)} without defining them"


def test_the_doctest_build_gives_the_examples_nothing():
  """``sphinx -b doctest`` runs the examples after ``doctest_global_setup``: there must be none."""
  tree = ast.parse((ROOT / "docs" / "conf.py").read_text())
  assigned = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
              for target in node.targets if isinstance(target, ast.Name)}
  assert "extensions" in assigned and "doctest_global_setup" not in assigned
