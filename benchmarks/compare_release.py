"""Benchmark 5: the default training step of this tree against the previous release, in one process.

Run: ``python benchmarks/compare_release.py`` (small, medium, charlm),
``--quick`` for a tiny smoke run, ``--hlo`` to add the op counts of both
compiled steps, ``--extra`` to add this tree's ``loss_and_grad`` inside the
old release's step body (its two metrics). Writes
``benchmarks/results/compare_release.json``.

The previous release is ``--previous PATH`` (a checkout, or any folder that
holds its ``jaxrnn/`` package), or else ``--previous-rev REV`` of this
repository's git history, exported with ``git archive`` into a temporary
folder; by default the newest commit whose ``jaxrnn.__version__`` differs
from this tree's (the release before this one). The old package is copied to
a temporary directory as the package ``jaxrnn_prev``, with every
``from jaxrnn`` / ``import jaxrnn`` rewritten to ``jaxrnn_prev``, so both
versions live in one process and all of the old code's internal imports
resolve to the old code. Both steps are the default fused training step of
each release: one-layer tanh model, summed cross-entropy, ``optax.adam(1e-3)``,
jit-compiled with donated buffers, on the same data and the same initial
weights (their first losses must agree). Releases from 0.2.0 on take
``RNNParams(layers, W_hy, b_y)`` and ``make_train_step(optimizer, model=,
loss=, compute=)``; 0.1.0 took a flat ``RNNParams`` and
``make_train_step(optimizer, LossSpec(activation=...))``: both are handled.
Steps run interleaved (two consecutive calls per version and round, the second
timed), and ``new / old`` is the ratio of the medians (< 1: the new code is
faster), in wall time and in process CPU time.
"""

from __future__ import annotations

import argparse
import ast
import collections
import importlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from common import interleaved_times, machine_info, print_table, write_json  # noqa: I001
from train_step import CONFIGS, LEARNING_RATE, LOSS, QUICK_CONFIGS, jax_stepper, make_problem, \
    rnn_params

REPOSITORY = Path(__file__).resolve().parents[1]
IMPORT = re.compile(r"^(\s*)(from|import)\s+jaxrnn\b", re.MULTILINE)


def git(*args: str, repository: Path = REPOSITORY) -> bytes:
  """The output of ``git args`` in ``repository``.

  Raises:
    RuntimeError: git is missing or the command failed (e.g. a shallow clone lacks the commit).
  """
  try:
    done = subprocess.run(["git", "-C", str(repository), *args], capture_output=True, check=False)
  except OSError as error:
    raise RuntimeError(f"git is not available: {error}") from None
  if done.returncode:
    raise RuntimeError(f"git {' '.join(args)}: {done.stderr.decode().strip()}")
  return done.stdout


def version_at(rev: str, repository: Path = REPOSITORY) -> str | None:
  """``jaxrnn.__version__`` as committed at ``rev`` (``None`` if it has none)."""
  try:
    source = git("show", f"{rev}:jaxrnn/__init__.py", repository=repository).decode()
  except RuntimeError:
    return None
  for node in ast.parse(source).body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__"
                                            for t in node.targets):
      return ast.literal_eval(node.value)
  return None


def previous_release(repository: Path = REPOSITORY, current: str = jaxrnn.__version__) -> str:
  """The newest commit of ``repository`` whose ``jaxrnn.__version__`` is not ``current`` (the
  released state of the previous version, not the commit that first set it).

  Raises:
    RuntimeError: no such commit in the history this checkout has (or no git).
  """
  for rev in git("log", "--format=%H", repository=repository).decode().split():
    version = version_at(rev, repository)
    if version is not None and version != current:
      return rev
  raise RuntimeError(f"no commit of a version other than {current} in the git history of "
                     f"{repository.name} (a shallow clone?)")


def export_revision(rev: str, destination: Path, repository: Path = REPOSITORY) -> Path:
  """Writes the ``jaxrnn/`` package of commit ``rev`` into ``destination`` (``git archive``, so
  the repository itself is left untouched); returns ``destination``."""
  archive = git("archive", "--format=tar", rev, "jaxrnn", repository=repository)
  with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
    tar.extractall(destination, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
  return destination


def import_previous(checkout: Path, name: str = "jaxrnn_prev"):
  """Imports ``checkout/jaxrnn`` as the package ``name`` (a rewritten copy in a temp dir)."""
  if name in sys.modules:
    return sys.modules[name]
  if not (Path(checkout) / "jaxrnn" / "__init__.py").is_file():
    raise FileNotFoundError(f"{checkout} holds no jaxrnn package (jaxrnn/__init__.py)")
  root = Path(tempfile.mkdtemp(prefix="jaxrnn_prev_"))
  shutil.copytree(Path(checkout) / "jaxrnn", root / name,
                  ignore=shutil.ignore_patterns("__pycache__"))
  for path in (root / name).rglob("*.py"):
    text = path.read_text()
    path.write_text(IMPORT.sub(lambda m: f"{m.group(1)}{m.group(2)} {name}", text))
  sys.path.insert(0, str(root))
  try:
    module = importlib.import_module(name)
  finally:
    sys.path.remove(str(root))
  assert Path(module.__file__).parent == root / name, module.__file__
  return module


def old_step(prev, weights, optimizer: optax.GradientTransformation, mesh: int | None = None):
  """``(step, params)``: the previous release's default fused step and its params of ``weights``."""
  if hasattr(prev, "CellParams"):                                  # 0.2.0 on: layered params
    params = prev.RNNParams(layers=((prev.CellParams(*(jnp.asarray(a) for a in (
        weights.W_xh, weights.W_hh, weights.b_h))),),), W_hy=jnp.asarray(weights.W_hy),
                            b_y=jnp.asarray(weights.b_y))
    step = prev.make_train_step(optimizer, model=prev.ModelSpec(),
                                loss=prev.LossSpec(loss="cross_entropy", reduction="sum"),
                                compute=prev.ComputeSpec(),
                                **({} if mesh is None else {"mesh": mesh}))
    return step, params
  if mesh is not None:
    raise ValueError("the 0.1.0 release has no data-parallel step: compare with --devices 1")
  params = prev.RNNParams(*(jnp.asarray(a) for a in weights))  # 0.1.0: W_xh, W_hh, W_hy, b_h, b_y
  return prev.make_train_step(optimizer, prev.LossSpec(loss="cross_entropy", activation="tanh",
                                                       reduction="sum")), params


def old_and_new_steps(prev, sizes: tuple[int, ...], extra: bool = False, mesh: int | None = None,
                      ) -> tuple[dict[str, Callable[[], float]], dict[str, Any]]:
  """Blocking steppers ``{"old": ..., "new": ...}`` on the same problem, and the raw pieces.

  With ``extra``, also ``"new_old_metrics"``: this tree's :func:`jaxrnn.loss_and_grad`
  in the old release's step body (metrics ``loss`` and ``grad_norm`` only), which
  separates the cost of the new step's extra metric from that of the loss and gradient.
  """
  problem = make_problem(*sizes)
  w = problem.params
  optimizer = optax.adam(LEARNING_RATE)
  old, old_params = old_step(prev, w, optimizer, mesh)
  old_batch = prev.Batch(jnp.asarray(problem.xs), jnp.asarray(problem.targets))
  new_params = rnn_params(w)
  new_batch = jaxrnn.Batch(jnp.asarray(problem.xs), jnp.asarray(problem.targets))
  new_step = jaxrnn.make_train_step(optimizer, model=jaxrnn.ModelSpec(), loss=LOSS,
                                    compute=jaxrnn.ComputeSpec(), mesh=mesh)

  def loss_only(step):
    def run(params, opt_state, batch):
      params, opt_state, metrics = step(params, opt_state, batch)
      return params, opt_state, metrics["loss"]
    return run

  calls = {"old": jax_stepper(loss_only(old), old_params, optimizer.init(old_params),
                              old_batch),
           "new": jax_stepper(loss_only(new_step), new_params, optimizer.init(new_params),
                              new_batch)}
  pieces = {"old": (old, old_params, optimizer.init(old_params), old_batch),
            "new": (new_step, new_params, optimizer.init(new_params), new_batch)}
  if extra:
    def plain_step(params, opt_state, batch):
      value, grads = jaxrnn.loss_and_grad(params, batch, model=jaxrnn.ModelSpec(), loss=LOSS)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state,
              {"loss": value, "grad_norm": optax.tree.norm(grads)})
    plain = jax.jit(plain_step, donate_argnums=(0, 1))
    params = rnn_params(w)
    calls["new_old_metrics"] = jax_stepper(loss_only(plain), params, optimizer.init(params),
                                           new_batch)
    params = rnn_params(w)
    pieces["new_old_metrics"] = (plain, params, optimizer.init(params), new_batch)
  return calls, pieces


def hlo_op_counts(step, params, opt_state, batch) -> collections.Counter:
  """Op counts of the optimized HLO of ``step`` (every computation, loop bodies included)."""
  text = step.lower(params, opt_state, batch).compile().as_text()
  ops = re.findall(r"=\s*[\w\[\]{}, :./-]*?\s([a-z][\w-]*)\(", text)
  return collections.Counter(ops)


def run_config(prev, sizes: tuple[int, ...], rounds: int, warmup: int,
               hlo: bool = False, extra: bool = False, mesh: int | None = None) -> dict[str, Any]:
  """Times old and new interleaved on one configuration; medians, ratios, first losses."""
  calls, pieces = old_and_new_steps(prev, sizes, extra, mesh)
  first = {name: call() for name, call in calls.items()}
  wall, cpu = interleaved_times(calls, rounds, warmup)
  med = {k: float(np.median(v)) for k, v in wall.items()}
  cpu_med = {k: float(np.median(v)) for k, v in cpu.items()}
  result = {"sizes": dict(zip("TBIHO", sizes)), "first_loss": first,
            "old_ms": 1e3 * med["old"], "new_ms": 1e3 * med["new"],
            "ratio_new_over_old": med["new"] / med["old"],
            "old_cpu_ms": 1e3 * cpu_med["old"], "new_cpu_ms": 1e3 * cpu_med["new"],
            "cpu_ratio_new_over_old": cpu_med["new"] / cpu_med["old"],
            "paired_median_ratio": float(np.median(np.array(wall["new"])
                                                    / np.array(wall["old"]))),
            "times_ms": {k: [1e3 * t for t in v] for k, v in wall.items()}}
  if extra:
    result["new_old_metrics_ms"] = 1e3 * med["new_old_metrics"]
    result["ratio_new_old_metrics_over_old"] = med["new_old_metrics"] / med["old"]
    result["cpu_ratio_new_old_metrics_over_old"] = cpu_med["new_old_metrics"] / cpu_med["old"]
  if hlo:
    counts = {name: hlo_op_counts(*pieces[name]) for name in ("old", "new")}
    ops = sorted(set(counts["old"]) | set(counts["new"]))
    result["hlo_ops"] = {op: (counts["old"][op], counts["new"][op]) for op in ops}
  return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
  parser.add_argument("--rounds", type=int, default=20, help="timed steps per version")
  parser.add_argument("--warmup", type=int, default=3)
  where = parser.add_mutually_exclusive_group()
  where.add_argument("--previous", "--prev", type=Path, default=None, metavar="PATH",
                     help="a checkout of the previous release (a folder holding its jaxrnn/)")
  where.add_argument("--previous-rev", default=None, metavar="REV",
                     help="a commit of this repository to compare against (default: the newest "
                          "commit of another jaxrnn version)")
  parser.add_argument("--hlo", action="store_true", help="also count the compiled HLO ops")
  parser.add_argument("--devices", type=int, default=None, metavar="N",
                      help="split each batch over N CPU devices in both versions (mesh=N)")
  parser.add_argument("--extra", action="store_true",
                      help="also time the new loss_and_grad in the old step body (old metrics)")
  parser.add_argument("--output", default=None)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.devices is not None:
    jax.config.update("jax_num_cpu_devices", args.devices)      # before JAX's first computation
  if args.previous is not None:
    source, prev = str(args.previous), import_previous(args.previous)
  else:
    source = args.previous_rev or previous_release()
    prev = import_previous(export_revision(source,
                                           Path(tempfile.mkdtemp(prefix="jaxrnn_release_"))))
  if args.quick:
    configs, rounds, warmup = QUICK_CONFIGS, 3, 1
  else:
    configs, rounds, warmup = {n: CONFIGS[n] for n in args.configs}, args.rounds, args.warmup
  payload = {"machine": machine_info(), "prev_version": prev.__version__, "prev_source": source,
             "new_version": jaxrnn.__version__, "rounds": rounds, "warmup": warmup,
             "devices": args.devices or 1, "configs": {}}
  for name, sizes in configs.items():
    payload["configs"][name] = run_config(prev, sizes, rounds, warmup, args.hlo, args.extra,
                                          args.devices)
    print(f"{name} done", flush=True)
  print(f"\njaxrnn {jaxrnn.__version__} (new) vs {prev.__version__} (old), default fused step "
        f"on {args.devices or 1} device(s), median of {rounds} interleaved rounds")
  print_table(["config", "(T, B, I, H, O)", "old ms", "new ms", "new / old",
               "paired new / old", "old CPU ms", "new CPU ms", "CPU new / old",
               "first loss old / new"],
              [(name, tuple(r["sizes"].values()), r["old_ms"], r["new_ms"],
                f"{r['ratio_new_over_old']:.3f}", f"{r['paired_median_ratio']:.3f}",
                r["old_cpu_ms"], r["new_cpu_ms"], f"{r['cpu_ratio_new_over_old']:.3f}",
                f"{r['first_loss']['old']:.2f} / {r['first_loss']['new']:.2f}")
               for name, r in payload["configs"].items()])
  if args.extra:
    print_table(["config", "new with old metrics ms", "x old (wall)", "x old (CPU)"],
                [(name, r["new_old_metrics_ms"], f"{r['ratio_new_old_metrics_over_old']:.3f}",
                  f"{r['cpu_ratio_new_old_metrics_over_old']:.3f}")
                 for name, r in payload["configs"].items()])
  if args.hlo:
    for name, r in payload["configs"].items():
      diff = {op: c for op, c in r["hlo_ops"].items() if c[0] != c[1]}
      print(f"\n{name}: HLO ops that differ (old, new): {diff}")
  path = write_json(args.output or ("compare_release_quick" if args.quick else "compare_release"),
                    payload)
  print(f"\nwrote {path}")
  return payload


if __name__ == "__main__":
  main()
