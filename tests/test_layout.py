"""The library's layout, checked statically (``ast`` over the source; nothing of jaxrnn imported).

* the modules form layers: each library module imports only modules of a lower
  layer (so there is no import cycle), and never the application
  (:mod:`jaxrnn.app`);
* no function takes more than 8 parameters;
* the step equation, the read-out, the time flip and the activation tables
  are each written once, in ``jaxrnn/cell.py``;
* the package stays small (``wc -l``): the library at most 3,500 lines, the application
  (``jaxrnn/app/``) at most 1,800 (3,800 in all at the renovation of 0.3.0; since then the
  application has grown by the coordinator of multi-process jobs, ``jaxrnn/app/job.py``, a help
  line per option and the long-sequence gradients command; the library by the Flax and Equinox
  layers, the Lyapunov exponents, the memory rule, the time split and the runnable docstring
  examples of 0.4.0).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jaxrnn"

LAYERS: list[tuple[str, ...]] = [
    ("pytrees",), ("checks",), ("spec",), ("cell",), ("kernels",), ("recurrence",), ("dropout",),
    ("timesplit",), ("unroll",), ("losses",), ("bptt",), ("parallel",), ("train",), ("tbptt",),
    ("inference", "diagnostics", "init", "interop"), ("layers",), ("nnx", "equinox"),
]
"""The library's layers, bottom first (the plan's list): a module imports only from lower ones."""
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}
ENTRY_POINTS = ("__init__", "__main__")
"""Outside the layers: the package's public face and ``python -m jaxrnn`` (the app's command)."""
MAX_PARAMETERS = 8
LAYER_CONSTRUCTORS = {"jaxrnn/nnx.py": "__init__", "jaxrnn/equinox.py": "__init__"}
"""Exempt from :data:`MAX_PARAMETERS`: the Flax and Equinox layers' constructors take the keywords
of ``torch.nn.RNN`` and Keras (issue 26), as the layers they stand in for do."""
MAX_LINES = {"library": 3680, "application": 1840}
HOME = "cell.py"
"""Where the step, the read-out, the flip and the activation tables live."""


def module_name(path: Path) -> str:
  """``jaxrnn/app/cli.py -> "jaxrnn.app.cli"``; ``jaxrnn/__init__.py -> "jaxrnn"``."""
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def sources() -> dict[str, tuple[Path, ast.Module]]:
  """Every module of the package (the app included): its name, path and syntax tree."""
  found = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    found[module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
  return found


def is_module(name: str) -> bool:
  return name in sources()


def imports(name: str) -> set[str]:
  """The jaxrnn modules that module ``name`` imports, anywhere in it (function bodies and
  ``importlib.import_module("jaxrnn...")`` included); ``from jaxrnn.x import y`` counts as
  ``jaxrnn.x.y`` when ``y`` is a module, else as ``jaxrnn.x``."""
  path, tree = sources()[name]
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:                           # relative: from . import x, from .x import y
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
      else:
        source = node.module
      for alias in node.names:
        child = f"{source}.{alias.name}"
        found.add(child if is_module(child) else source)
    elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)
          and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")):
      found.add(node.args[0].value)
  return {module for module in found if module == "jaxrnn" or module.startswith("jaxrnn.")}


def library_modules() -> list[str]:
  """The library's modules, ``jaxrnn/*.py`` (the app is ``jaxrnn/app/``)."""
  return [name for name, (path, _) in sources().items() if path.parent == PACKAGE]


def layered_modules() -> list[str]:
  return [name for name in library_modules()
          if sources()[name][0].stem not in ENTRY_POINTS]


def test_the_static_checks_see_the_package():
  """The checks below read what they should: every module, and imports as they are written."""
  names = set(sources())
  assert {"jaxrnn", "jaxrnn.cell", "jaxrnn.train", "jaxrnn.app.cli", "jaxrnn.app.data"} <= names
  assert imports("jaxrnn.tbptt") >= {"jaxrnn.train", "jaxrnn.parallel", "jaxrnn.checks"}
  assert "jaxrnn.cell" in imports("jaxrnn.kernels")
  assert "jaxrnn" in imports("jaxrnn.app.cli")                       # import jaxrnn
  assert "jaxrnn.app.cli" in imports("jaxrnn.__main__")


def test_every_library_module_has_a_layer():
  """A new module must be placed in :data:`LAYERS` (and a removed one taken out)."""
  stems = {sources()[name][0].stem for name in layered_modules()}
  assert stems == set(RANK), (sorted(stems - set(RANK)), sorted(set(RANK) - stems))


def test_library_modules_import_only_lower_layers():
  wrong = []
  for name in layered_modules():
    rank = RANK[name.rpartition(".")[2]]
    for target in sorted(imports(name)):
      stem = target.rpartition(".")[2] if target.count(".") == 1 else None
      if stem not in RANK or RANK[stem] >= rank:
        wrong.append(f"{name} imports {target}")
  assert not wrong, "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
  state: dict[str, int] = {}                          # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for child in sorted(graph.get(node, ())):
      if state.get(child) == 1:
        return path[path.index(child):] + [child]
      if child not in state:
        cycle = visit(child)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_find_cycle_finds_one():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_jaxrnn_modules():
  graph = {name: {m for m in imports(name) if is_module(m)} for name in sources()}
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_library_never_imports_the_app():
  """No library module names ``jaxrnn.app`` (``__main__``, ``python -m jaxrnn``, is the app's
  command and is itself imported by nothing), and ``import jaxrnn`` reaches no app module."""
  wrong = [f"{name} imports {target}" for name in library_modules() for target in imports(name)
           if target.startswith("jaxrnn.app") and not name.endswith(".__main__")]
  assert not wrong, "\n".join(wrong)
  assert not any("jaxrnn.__main__" in imports(name) for name in sources())
  reached, todo = set(), ["jaxrnn"]
  while todo:
    name = todo.pop()
    if name in reached or not is_module(name):
      continue
    reached.add(name)
    todo.extend(imports(name))
    parent = name.rpartition(".")[0]          # importing jaxrnn.x.y runs jaxrnn.x's __init__
    todo.extend([parent] if parent else [])
  assert "jaxrnn.train" in reached
  assert not [name for name in reached if name.startswith("jaxrnn.app")], sorted(reached)


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> int:
  args = node.args
  return (len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
          + (args.vararg is not None) + (args.kwarg is not None))


def test_parameter_count_counts_every_kind():
  function = ast.parse("def f(a, /, b, *c, d, e=1, **f): pass").body[0]
  assert parameter_count(function) == 6


def test_no_function_takes_more_than_eight_parameters():
  wrong = []
  for name, (path, tree) in sources().items():
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        count = parameter_count(node)
        where = str(path.relative_to(PACKAGE.parent))
        if count > MAX_PARAMETERS and LAYER_CONSTRUCTORS.get(where) != getattr(node, "name", ""):
          wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} "
                       f"{getattr(node, 'name', 'lambda')} takes {count} parameters")
  assert not wrong, "\n".join(wrong)


# --- written once, in cell.py ----------------------------------------------------------------

ACTIVATION_FUNCTIONS = {"jnp.tanh", "jax.numpy.tanh", "np.tanh", "numpy.tanh", "jax.lax.tanh",
                        "lax.tanh", "jax.nn.tanh", "jax.nn.relu", "nn.relu", "jax.nn.sigmoid",
                        "nn.sigmoid", "jax.lax.logistic", "jax.scipy.special.expit"}
"""The activations, as the code would name them: only the tables of cell.py may."""
ACTIVATION_NAMES = {"tanh", "relu", "sigmoid", "logistic", "expit"}
ZERO_CLAMPS = {"diagnostics.py": ["jnp.maximum(gaps, 0)"]}
"""``maximum(x, 0)`` outside cell.py that is not a ReLU: the diagnostics' exponent clamp."""
PRODUCTS = {"dot", "matmul", "einsum", "tensordot", "dot_general"}


def mentions_transposed_W_hh(node: ast.AST) -> bool:
  """``W_hh.T`` / ``cell.W_hh.T`` / ``W_hh_T``: the forward recurrence's weight."""
  return ((isinstance(node, ast.Attribute) and node.attr == "T"
           and ast.unparse(node.value).split(".")[-1] == "W_hh")
          or (isinstance(node, ast.Name) and node.id == "W_hh_T"))


def is_zero(node: ast.AST) -> bool:
  return isinstance(node, ast.Constant) and not isinstance(node.value, bool) and node.value == 0


def once_violations(path: Path, tree: ast.Module) -> list[str]:
  """What in ``tree`` writes the step, the read-out, the flip or an activation table again."""
  found = []
  where = lambda node, what: found.append(f"{path.name}:{getattr(node, 'lineno', '?')} {what}")
  for node in ast.walk(tree):
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        if isinstance(target, ast.Name) and "ACTIVATIONS" in target.id:
          where(node, f"defines {target.id}")
    elif isinstance(node, ast.Dict):
      keys = {key.value for key in node.keys if isinstance(key, ast.Constant)}
      if keys & {"tanh", "relu"}:
        where(node, f"a table keyed by activations: {ast.unparse(node)[:60]}")
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      if "activ" in node.name.lower():
        where(node, f"defines {node.name}")
    elif isinstance(node, ast.Attribute):
      text = ast.unparse(node)
      if text in ACTIVATION_FUNCTIONS:
        where(node, f"uses {text}")
      elif node.attr == "T" and ast.unparse(node.value).split(".")[-1] == "W_hy":
        where(node, f"the read-out's {text}")
      elif node.attr == "flip" or text == "jax.lax.rev":
        where(node, f"flips time: {text}")
    elif isinstance(node, ast.ImportFrom):
      for alias in node.names:
        if alias.name in ACTIVATION_NAMES or alias.name == "flip":
          where(node, f"imports {alias.name} from {node.module}")
    elif isinstance(node, ast.Subscript):
      if isinstance(node.value, ast.Name) and "ACTIVATIONS" in node.value.id:
        where(node, f"applies {ast.unparse(node)}")
      elif (isinstance(node.slice, ast.Slice) and node.slice.step is not None
            and ast.unparse(node.slice.step) == "-1"):
        where(node, f"flips time: {ast.unparse(node)}")
    elif isinstance(node, ast.BinOp):
      operands = (node.left, node.right)
      if isinstance(node.op, ast.Add) and any(
          ast.unparse(side).split(".")[-1] == "b_y" for side in operands):
        where(node, f"the read-out's + b_y: {ast.unparse(node)[:60]}")
      if isinstance(node.op, ast.MatMult) and any(map(mentions_transposed_W_hh, operands)):
        where(node, f"the step's product with W_hh^T: {ast.unparse(node)[:60]}")
    elif isinstance(node, ast.Call):
      callee = ast.unparse(node.func).split(".")[-1]
      if callee in PRODUCTS and any(map(mentions_transposed_W_hh, node.args)):
        where(node, f"the step's product with W_hh^T: {ast.unparse(node)[:60]}")
      if ((callee == "maximum" or ast.unparse(node.func) in ("jax.lax.max", "lax.max"))
          and any(map(is_zero, node.args))
          and ast.unparse(node) not in ZERO_CLAMPS.get(path.name, [])):
        where(node, f"a ReLU: {ast.unparse(node)}")
      if callee == "dict" and {k.arg for k in node.keywords} & {"tanh", "relu"}:
        where(node, f"a table keyed by activations: {ast.unparse(node)[:60]}")
  return found


@pytest.mark.parametrize("code,what", [
    ("_ACTIVATIONS = {}", "defines _ACTIVATIONS"),
    ("table = {'tanh': jnp.tanh}", "table keyed by activations"),
    ("def _activate(model, z): return z", "defines _activate"),
    ("h = jnp.maximum(z, 0)", "a ReLU"),
    ("h = jax.nn.relu(z)", "uses jax.nn.relu"),
    ("from jax.numpy import tanh", "imports tanh"),
    ("h = ACTIVATIONS[name](a)", "applies ACTIVATIONS"),
    ("z = h @ params.W_hy.T", "the read-out's params.W_hy.T"),
    ("z = jnp.einsum('tbh,oh->tbo', h, W_hy) + params.b_y", "the read-out's + b_y"),
    ("h = a + h @ cell.W_hh.T", "product with W_hh^T"),
    ("h = a + jnp.dot(h, W_hh_T)", "product with W_hh^T"),
    ("x = xs[::-1]", "flips time"),
    ("x = jnp.flip(xs, 0)", "flips time"),
])
def test_the_written_once_check_catches_a_second_copy(code, what):
  """Each pattern, written outside cell.py, is caught (and what the library itself does
  outside cell.py, e.g. the backward ``delta @ W_hh``, is not)."""
  found = once_violations(Path("kernels.py"), ast.parse(code))
  assert len(found) >= 1 and any(what in line for line in found), found
  fine = ("delta_t @ W_hh\nW_hh_T = W_hh.T\nstep(model, a_t, h, W_hh_T)\ndb_y = dz.sum(0)\n"
          "x = jnp.maximum(weights.sum(), 1)\nfor l in reversed(range(3)): pass")
  assert once_violations(Path("recurrence.py"), ast.parse(fine)) == []


def test_step_readout_flip_and_activation_tables_are_written_once_in_cell():
  wrong = []
  for path, tree in sources().values():
    if path != PACKAGE / HOME:
      wrong += once_violations(path, tree)
  assert not wrong, "\n".join(wrong)
  path, tree = sources()["jaxrnn.cell"]
  home = "\n".join(once_violations(path, tree))
  for what in ("defines ACTIVATIONS", "defines OUTPUT_ACTIVATIONS", "uses jnp.tanh",
               "uses jax.nn.relu", "W_hy.T", "flips time", "+ b_y"):
    assert what in home, (what, home)                   # the one copy is where it should be


def test_the_library_and_the_application_stay_small():
  """Counted as ``wc -l jaxrnn/*.py`` and ``wc -l jaxrnn/app/*.py`` do: newline characters."""
  for part, folder in (("library", PACKAGE), ("application", PACKAGE / "app")):
    counts = {path.name: path.read_bytes().count(b"\n") for path in sorted(folder.glob("*.py"))}
    assert {"cell.py", "cli.py"} & set(counts)
    largest = sorted(counts.items(), key=lambda item: -item[1])[:6]
    assert sum(counts.values()) <= MAX_LINES[part], (part, sum(counts.values()), largest)
