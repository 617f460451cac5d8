"""Benchmark 2: step time, compile time and memory of a training step as ``T`` grows to 10^6.

Run: ``python benchmarks/scaling.py`` (``T`` from 10 to 10^6), ``--quick``
for a smoke run. Writes ``benchmarks/results/scaling.json`` and ``scaling.png``.

Methods, all ``value_and_grad`` of :func:`jaxrnn.sequence_loss` (one-layer
tanh ``ModelSpec()``, ``LossSpec(reduction="sum")`` cross-entropy) + an Adam
update, float32, jit-compiled; they differ only in ``checkpoint_every``:

* ``fused``: ``None``, every state stored (the hand-BPTT ``custom_vjp``);
* ``checkpointed``: ``ceil(sqrt(T))``;
* ``auto``: ``"auto"``, the default (:func:`jaxrnn.spec.resolve_checkpoint`).

Each method and ``T`` runs in a fresh process (``--child``), so its peak
resident memory (``ru_maxrss``: data, compiled step, buffers) is its own. A
configuration whose :func:`jaxrnn.spec.step_memory` exceeds this machine's
memory is not run ("does not fit"). Compile time is the wall time of
``jax.jit(step).lower(...).compile()``; step times are medians of ``--rounds``
steps after one warm-up (fewer past ``T = 10^5``, where a step takes seconds
to minutes). ``temp`` is XLA's compiled memory analysis
(``compiled.memory_analysis().temp_size_in_bytes``: the step's scratch);
``hs + inputs`` is ``4 (T B H + T B I + T B)`` bytes, the states and the data.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from common import RESULTS, machine_info, print_table, write_json  # noqa: I001
from jaxrnn.pytrees import Shape
from jaxrnn.spec import resolve_checkpoint, step_memory

SIZES = (16, 32, 128, 32)                          # (B, I, H, O)
STEPS = (10, 100, 1000, 3000, 10_000, 30_000, 100_000, 300_000, 1_000_000)
QUICK_STEPS = (10,)
METHODS = ("fused", "checkpointed", "auto")
LOSS = jaxrnn.LossSpec(loss="cross_entropy", reduction="sum")
LONG = 100_000
"""From this ``T`` on, one timed step per method (a step takes seconds to minutes)."""


def compute_spec(method: str, num_steps: int) -> jaxrnn.ComputeSpec:
  """The :class:`jaxrnn.ComputeSpec` of ``method`` at ``T = num_steps``."""
  every = {"fused": None, "checkpointed": math.isqrt(num_steps - 1) + 1, "auto": "auto"}[method]
  return jaxrnn.ComputeSpec(checkpoint_every=every)


def shape() -> Shape:
  _, inputs, hidden, outputs = SIZES
  return Shape(inputs, hidden, outputs, 1, 1)


def chunk_size(method: str, num_steps: int) -> int | None:
  """The ``checkpoint_every`` the step of ``method`` runs with (``"auto"`` resolved)."""
  return resolve_checkpoint(compute_spec(method, num_steps), shape(), num_steps, SIZES[0], 4)


def make_step(method: str, num_steps: int, optimizer: optax.GradientTransformation):
  """``(params, opt_state, batch) -> (params, opt_state, loss)``, not yet jitted."""
  loss = functools.partial(jaxrnn.sequence_loss, model=jaxrnn.ModelSpec(), loss=LOSS,
                           compute=compute_spec(method, num_steps))

  def step(params, opt_state, batch):
    (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value
  return step


def measure(method: str, num_steps: int, rounds: int) -> dict[str, Any]:
  """Compile time, memory analysis, median step time and peak RSS of one method at one ``T``."""
  batch, inputs, hidden, outputs = SIZES
  rng = np.random.default_rng(0)
  params = jaxrnn.init_params(jax.random.key(0), inputs, hidden, outputs, init="glorot",
                              dtype=jnp.float32)
  data = jaxrnn.Batch(
      xs=jnp.asarray(rng.standard_normal((num_steps, batch, inputs), dtype=np.float32)),
      targets=jnp.asarray(rng.integers(0, outputs, (num_steps, batch)).astype(np.int32)))
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)
  start = time.perf_counter()
  compiled = jax.jit(make_step(method, num_steps, optimizer)).lower(
      params, opt_state, data).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  times = []
  for _ in range(rounds + 1):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, opt_state, data))
    times.append(time.perf_counter() - start)
  return {"compile_s": compile_s, "temp_mb": memory.temp_size_in_bytes / 1e6,
          "total_mb": (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                       + memory.output_size_in_bytes) / 1e6,
          "step_ms": 1e3 * float(np.median(times[1:])), "rounds": rounds,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
          "checkpoint_every": chunk_size(method, num_steps)}


def run_child(method: str, num_steps: int, rounds: int) -> dict[str, Any]:
  """:func:`measure` in a fresh process; a crash is reported, not raised."""
  done = subprocess.run([sys.executable, __file__, "--child", method, str(num_steps),
                         str(rounds)], capture_output=True, text=True, check=False)
  if done.returncode:
    return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]}
  return json.loads(done.stdout.strip().splitlines()[-1])


def row(num_steps: int, rounds: int, available: int) -> dict[str, Any]:
  """Every method at one ``T``; those whose estimate exceeds ``available`` bytes are skipped."""
  batch, inputs, hidden, _ = SIZES
  methods = {}
  for method in METHODS:
    estimate = step_memory(shape(), num_steps, batch, 4, chunk_size(method, num_steps))
    methods[method] = ({"estimate_mb": estimate / 1e6, **run_child(method, num_steps, rounds)}
                       if estimate <= available else
                       {"estimate_mb": estimate / 1e6, "fits": False})
  stored_mb = 4 * num_steps * batch * (hidden + inputs + 1) / 1e6
  return {"T": num_steps, "hs_plus_inputs_mb": stored_mb, "methods": methods}


def plot(rows: list[dict[str, Any]], path) -> None:
  """Step time, temp memory and peak RSS against ``T`` (log-log), one line per method."""
  from matplotlib.figure import Figure
  panels = (("step_ms", "step time, wall (ms)"), ("temp_mb", "XLA temp memory (MB)"),
            ("peak_rss_mb", "peak RSS of the process (MB)"))
  fig = Figure(figsize=(15, 4.2))
  for ax, (key, label) in zip(fig.subplots(1, 3), panels):
    for method in METHODS:
      points = [(r["T"], r["methods"][method][key]) for r in rows if key in r["methods"][method]]
      ax.plot(*zip(*points), "o-" if method != "auto" else "k.:", label=method)
    if key == "temp_mb":
      ax.plot([r["T"] for r in rows], [r["hs_plus_inputs_mb"] for r in rows], "k--",
              label="hs + inputs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("T (steps)")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  batch, inputs, hidden, outputs = SIZES
  fig.suptitle(f"jaxrnn training step vs sequence length (B={batch}, I={inputs}, H={hidden}, "
               f"O={outputs}, float32)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="one short T, one round, no plot")
  parser.add_argument("--steps", nargs="+", type=int, default=list(STEPS), help="values of T")
  parser.add_argument("--rounds", type=int, default=5, help="timed steps per method and T")
  parser.add_argument("--output", default="scaling", help="results/NAME.json")
  parser.add_argument("--child", nargs=3, metavar=("METHOD", "T", "ROUNDS"), help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
  args = parse_args(argv)
  if args.child:
    method, num_steps, rounds = args.child
    print(json.dumps(measure(method, int(num_steps), int(rounds))))
    return None
  steps, rounds = (QUICK_STEPS, 1) if args.quick else (args.steps, args.rounds)
  available = jaxrnn.checks.device_memory()
  rows = []
  for num_steps in steps:
    rows.append(row(num_steps, rounds if num_steps < LONG else 1, available))
    print(f"T={num_steps} done", flush=True)
  table = [(r["T"], method, m.get("checkpoint_every", ""), m.get("step_ms", "does not fit"),
            m.get("temp_mb", ""), m.get("peak_rss_mb", ""), m["estimate_mb"],
            r["hs_plus_inputs_mb"]) for r in rows for method, m in r["methods"].items()]
  print_table(["T", "method", "k", "ms/step", "temp MB", "peak RSS MB", "estimate MB",
               "hs+inputs MB"], table)
  payload = {"machine": machine_info(), "sizes": dict(zip("BIHO", SIZES)), "rounds": rounds,
             "memory_bytes": available, "rows": rows}
  print(f"\nwrote {write_json(args.output + '_quick' if args.quick else args.output, payload)}")
  if not args.quick:
    plot(rows, RESULTS / f"{args.output}.png")
  return payload


if __name__ == "__main__":
  main()
