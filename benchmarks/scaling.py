"""Benchmark 2: step time, compile time and peak memory of a training step as ``T`` grows.

Run: ``python benchmarks/scaling.py`` (``T`` from 10 to 10,000), ``--quick``
for a smoke run. Writes ``benchmarks/results/scaling.json`` and ``scaling.png``.

Methods, all ``value_and_grad`` of :func:`jaxrnn.sequence_loss` (one-layer
tanh ``ModelSpec()``, ``LossSpec(reduction="sum")`` cross-entropy) + an Adam
update, float32, jit-compiled; they differ only in the ``ComputeSpec``:

* ``fused``: ``ComputeSpec(gradient="fused")``, the default hand-BPTT ``custom_vjp``;
* ``autodiff``: ``ComputeSpec(gradient="autodiff")``, ``jax.grad`` through ``lax.scan``;
* ``checkpointed``: ``ComputeSpec(gradient="fused", checkpoint_every=round(sqrt(T)))``.

Compile time is the wall (and process CPU) time of
``jax.jit(step).lower(...).compile()``; step times are medians, wall and CPU. Peak
memory is what XLA's compiled memory analysis reports
(``compiled.memory_analysis()``): ``temp`` (the preallocated scratch of the
step: activations, residuals, gradients) and ``temp + arguments + outputs``.
``hs + inputs`` is ``4 (T B H + T B I + T B)`` bytes, the memory that storing
the hidden states and the data needs.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from common import RESULTS, interleaved_times, machine_info, print_table, write_json  # noqa: I001

SIZES = (32, 32, 128, 32)                          # (B, I, H, O): the "small" configuration
STEPS = (10, 30, 100, 300, 1000, 3000, 10000)
QUICK_STEPS = (10,)
METHODS = ("fused", "autodiff", "checkpointed")
LOSS = jaxrnn.LossSpec(loss="cross_entropy", reduction="sum")


def compute_spec(method: str, num_steps: int) -> jaxrnn.ComputeSpec:
  """The :class:`jaxrnn.ComputeSpec` of ``method`` at ``T = num_steps``."""
  if method == "checkpointed":
    return jaxrnn.ComputeSpec(gradient="fused",
                              checkpoint_every=max(1, round(math.sqrt(num_steps))))
  return jaxrnn.ComputeSpec(gradient=method)


def make_step(method: str, num_steps: int, optimizer: optax.GradientTransformation):
  """``(params, opt_state, batch) -> (params, opt_state, loss)``, not yet jitted."""
  loss = functools.partial(jaxrnn.sequence_loss, model=jaxrnn.ModelSpec(), loss=LOSS,
                           compute=compute_spec(method, num_steps))

  def step(params, opt_state, batch):
    (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value
  return step


def measure(num_steps: int, methods: Sequence[str], rounds: int) -> dict[str, Any]:
  """Compile time, memory analysis and median step time of each method at one ``T``."""
  batch, inputs, hidden, outputs = SIZES
  rng = np.random.default_rng(0)
  params = jaxrnn.init_params(jax.random.key(0), inputs, hidden, outputs, init="glorot",
                              dtype=jnp.float32)
  data = jaxrnn.Batch(
      xs=jnp.asarray(rng.standard_normal((num_steps, batch, inputs), dtype=np.float32)),
      targets=jnp.asarray(rng.integers(0, outputs, (num_steps, batch)).astype(np.int32)))
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)
  results, calls = {}, {}
  for method in methods:
    start, cpu_start = time.perf_counter(), time.process_time()
    compiled = jax.jit(make_step(method, num_steps, optimizer)).lower(
        params, opt_state, data).compile()
    memory = compiled.memory_analysis()
    results[method] = {
        "compile_s": time.perf_counter() - start,
        "compile_cpu_s": time.process_time() - cpu_start,
        "temp_mb": memory.temp_size_in_bytes / 1e6,
        "total_mb": (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                     + memory.output_size_in_bytes) / 1e6,
    }
    calls[method] = functools.partial(
        lambda c: jax.block_until_ready(c(params, opt_state, data)), compiled)
  times, cpu = interleaved_times(calls, rounds, warmup=1)
  for method in methods:
    results[method]["step_ms"] = 1e3 * float(np.median(times[method]))
    results[method]["step_cpu_ms"] = 1e3 * float(np.median(cpu[method]))
  stored_mb = 4 * num_steps * batch * (hidden + inputs + 1) / 1e6
  return {"T": num_steps, "hs_plus_inputs_mb": stored_mb, "methods": results}


def plot(rows: list[dict[str, Any]], methods: Sequence[str], path) -> None:
  """Step time, compile time and temp memory against ``T`` (log-log), one line per method."""
  from matplotlib.figure import Figure
  steps = [row["T"] for row in rows]
  panels = (("step_ms", "step time, wall (ms)"), ("compile_cpu_s", "compile time, process CPU (s)"),
            ("temp_mb", "XLA temp memory (MB)"))
  fig = Figure(figsize=(15, 4.2))
  axes = fig.subplots(1, 3)
  for ax, (key, label) in zip(axes, panels):
    for method in methods:
      ax.plot(steps, [row["methods"][method][key] for row in rows], "o-", label=method)
    if key == "temp_mb":
      ax.plot(steps, [row["hs_plus_inputs_mb"] for row in rows], "k--", label="hs + inputs")
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
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  steps, rounds = (QUICK_STEPS, 1) if args.quick else (args.steps, args.rounds)
  rows = []
  for num_steps in steps:
    rows.append(measure(num_steps, METHODS, rounds))
    print(f"T={num_steps} done", flush=True)
  table = [(row["T"], method, r["step_ms"], r["step_cpu_ms"] / row["T"], r["compile_s"],
            r["compile_cpu_s"], r["temp_mb"], r["total_mb"], row["hs_plus_inputs_mb"])
           for row in rows for method, r in row["methods"].items()]
  print_table(["T", "method", "ms/step", "cpu ms/step/T", "compile s", "compile cpu s",
               "temp MB", "total MB", "hs+inputs MB"], table)
  payload = {"machine": machine_info(), "sizes": dict(zip("BIHO", SIZES)), "rounds": rounds,
             "rows": rows}
  print(f"\nwrote {write_json('scaling_quick' if args.quick else 'scaling', payload)}")
  if not args.quick:
    plot(rows, METHODS, RESULTS / "scaling.png")
    print(f"wrote {RESULTS / 'scaling.png'}")
  return payload


if __name__ == "__main__":
  main()
