"""Benchmark 7: each public function called outside ``jax.jit``, against the same call jitted.

Run: ``python benchmarks/eager_calls.py``, ``--quick`` for a smoke run. Writes
``benchmarks/results/eager_calls.json``.

Every function runs on one model (``--layers`` unidirectional tanh layers, ``I = O`` so that
``generate`` and ``tbptt_epoch`` can run it too) and one batch of ``(T, B, I, H, O)`` float32:
first its first call (checks, tracing, compiling), then eager calls and calls of
``jax.jit(call)`` on the same arguments, interleaved. ``eager / jit`` is what an eager call
pays over the jitted one (its checks of shapes, dtypes and values, with a host round trip for
the values, and the dispatch); ``compiles`` counts the XLA compilations of the second eager
call, which reuses the first call's program (0 expected).
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from common import interleaved_times, machine_info, print_table, write_json  # noqa: I001

SIZES = (100, 16, 8, 64, 8)          # (T, B, I, H, O), I = O
QUICK_SIZES = (12, 4, 5, 16, 5)
TBPTT_STEP = jaxrnn.make_tbptt_step(optax.adam(1e-3))
CALLS: dict[str, Callable[[jaxrnn.RNNParams, jaxrnn.Batch], Any]] = {
    "unroll": lambda p, b: jaxrnn.unroll(p, b.xs, lengths=b.lengths),
    "grad sequence_loss": lambda p, b: jax.grad(jaxrnn.sequence_loss, has_aux=True)(p, b),
    "loss_and_grad": lambda p, b: jaxrnn.loss_and_grad(p, b, mesh=None),
    "evaluate": lambda p, b: jaxrnn.evaluate(p, b, mesh=None),
    "bptt": lambda p, b: jaxrnn.bptt(p, b),
    "infer": lambda p, b: jaxrnn.infer(p, b.xs, lengths=b.lengths),
    "generate": lambda p, b: jaxrnn.generate(p, jax.random.key(0), b.targets[:, 0], 20),
    "gradient_flow (start=0)": lambda p, b: jaxrnn.gradient_flow(p, b.xs[:, 0], start=0),
    "lyapunov_exponents": lambda p, b: jaxrnn.lyapunov_exponents(p, b.xs[:, 0], k=4),
    "split_time (mesh=1)": lambda p, b: jaxrnn.split_time(p, b.xs[:, :1], mesh=1),
    "tbptt_epoch": lambda p, b: jaxrnn.tbptt_epoch(TBPTT_STEP, p, optax.adam(1e-3).init(p),
                                                   jaxrnn.Batch(b.xs, b.targets), 4),
}
"""The calls, each a function of ``(params, batch)``; ``batch`` has ``lengths`` (all ``T``)."""


def problem(sizes: tuple[int, ...], num_layers: int) -> tuple[jaxrnn.RNNParams, jaxrnn.Batch]:
  """Glorot weights and a batch of normal inputs and random classes, float32."""
  T, B, I, H, O = sizes
  params = jaxrnn.init_params(jax.random.key(0), I, H, O, num_layers=num_layers, init="glorot",
                              dtype=jnp.float32)
  rng = np.random.default_rng(0)
  batch = jaxrnn.Batch(jnp.asarray(rng.standard_normal((T, B, I), dtype=np.float32)),
                       jnp.asarray(rng.integers(0, O, (T, B)), jnp.int32),
                       lengths=jnp.full(B, T, jnp.int32))
  return params, batch


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds")
  parser.add_argument("--layers", type=int, default=2, help="unidirectional layers")
  parser.add_argument("--rounds", type=int, default=20, help="timed rounds")
  parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
  args = parser.parse_args(argv)
  sizes, rounds = (QUICK_SIZES, 2) if args.quick else (SIZES, args.rounds)
  params, batch = problem(sizes, args.layers)
  compiles = collections.Counter()
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **kwargs: compiles.update([event]))
  count = lambda: compiles["/jax/core/compile/backend_compile_duration"]
  results: dict[str, dict[str, Any]] = {}
  fns: dict[str, Callable[[], Any]] = {}
  for name, call in CALLS.items():
    eager = lambda call=call: jax.block_until_ready(call(params, batch))
    jitted = jax.jit(call)
    start = time.perf_counter()
    eager()
    first = time.perf_counter() - start
    before = count()
    eager()
    results[name] = {"first_call_ms": 1e3 * first, "compiles_second_call": count() - before}
    fns[name + " eager"] = eager
    fns[name + " jit"] = lambda jitted=jitted: jax.block_until_ready(jitted(params, batch))
  wall, _ = interleaved_times(fns, rounds, args.warmup)
  rows = []
  for name, r in results.items():
    r["eager_ms"] = 1e3 * float(np.median(wall[name + " eager"]))
    r["jit_ms"] = 1e3 * float(np.median(wall[name + " jit"]))
    r["eager_over_jit"] = r["eager_ms"] / r["jit_ms"]
    rows.append([name, f"{r['first_call_ms']:.0f}", f"{r['eager_ms']:.3f}", f"{r['jit_ms']:.3f}",
                 f"{r['eager_over_jit']:.2f}", r["compiles_second_call"]])
  T, B, I, H, O = sizes
  print(f"(T, B, I, H, O) = {sizes}, {args.layers} layers")
  print_table(["call", "first call ms", "eager ms", "jit ms", "eager / jit",
               "compiles, 2nd call"], rows)
  payload = {"machine": machine_info(), "sizes": dict(T=T, B=B, I=I, H=H, O=O),
             "layers": args.layers, "rounds": rounds, "warmup": args.warmup, "results": results}
  path = write_json("eager_calls_quick" if args.quick else "eager_calls", payload)
  print(f"\nwrote {path}")
  return payload


if __name__ == "__main__":
  main()
