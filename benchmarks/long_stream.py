"""Benchmark 6: one long stream (B = 1) split over time on 2 CPU devices, against the sequential chain.

Run: ``python benchmarks/long_stream.py``, ``--quick`` for a smoke run. Writes
``benchmarks/results/long_stream.json``. The process starts 2 host devices
(``jax_num_cpu_devices``); the sequential :func:`jaxrnn.infer` runs on one of them,
``jaxrnn.infer(..., mesh=2)`` (:func:`jaxrnn.split_time`) on both, interleaved in one run.

* Main: ``B = 1, I = 32, H = 64, O = 32``, ``T = 10^6``, float32, tanh,
  ``W_hh = g Q`` (``Q`` orthogonal) with ``g = 0.9``. The largest Lyapunov
  exponent ``lambda_1`` is measured on the trajectory (Benettin's renormalised
  tangent vector, NumPy float64, over the first ``--lyapunov-steps`` steps).
* Sweep: the same at ``T = --sweep-steps`` over ``g`` (``W_hh = g Q``): the
  speed-up, the boundary-correction steps and the fallback against
  ``lambda_1``; the correction grows as ``lambda_1 -> 0`` (Gonzalez et al.,
  2025) until the chain is chaotic and the split falls back.
* ``one segment``: :func:`jaxrnn.split_time` on one device (the chain with its
  inputs projected by one GEMM, unsplit), to tell the split's gain from the GEMM's.
* Peak RSS of the process (``ru_maxrss``) at the end.
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import Sequence
from typing import Any

import jax

jax.config.update("jax_num_cpu_devices", 2)   # before JAX's first computation

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxrnn  # noqa: E402
from common import interleaved_times, machine_info, print_table, write_json  # noqa: E402

SIZES = (1_000_000, 1, 32, 64, 32)          # (T, B, I, H, O)
QUICK_SIZES = (2_000, 1, 4, 8, 3)
MAIN_GAIN = 0.9
GAINS = (0.5, 0.8, 0.9, 0.95, 1.0, 1.1, 1.25, 1.5, 2.0)
QUICK_GAINS = (0.5, 3.0)


def make_params(gain: float, inputs: int, hidden: int, outputs: int,
                seed: int = 0) -> jaxrnn.RNNParams:
  """float32 tanh weights: ``W_hh = gain Q`` (``Q`` a random orthogonal matrix), the rest
  :func:`jaxrnn.init_params`' defaults."""
  params = jaxrnn.init_params(jax.random.key(seed), inputs, hidden, outputs, dtype=jnp.float32)
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((hidden, hidden)))
  (cell,), = params.layers
  return params._replace(layers=((cell._replace(W_hh=jnp.asarray(gain * q, jnp.float32)),),))


def lyapunov(params: jaxrnn.RNNParams, xs: np.ndarray) -> float:
  """``lambda_1`` per step of the trajectory over ``xs [T, 1, I]`` from ``h_0 = 0``: Benettin's
  ``v_t = J_t v_{t-1} / |J_t v_{t-1}|``, ``J_t = diag(1 - h_t^2) W_hh``, the mean of
  ``log |J_t v_{t-1}|`` (NumPy, float64)."""
  (cell,), = params.layers
  W_hh = np.asarray(cell.W_hh, np.float64)
  hs = np.asarray(jaxrnn.unroll(params, jnp.asarray(xs)).hs[:, 0], np.float64)       # [T, H]
  v = np.ones(len(W_hh)) / np.sqrt(len(W_hh))
  total = 0.0
  for h in hs:
    v = (1 - h * h) * (W_hh @ v)
    norm = np.linalg.norm(v)
    total += np.log(norm)
    v /= norm
  return total / len(hs)


def measure(params: jaxrnn.RNNParams, xs: np.ndarray, rounds: int) -> dict[str, Any]:
  """Sequential against time split: median times, the split's stats and its largest
  difference from the sequential outputs (relative to the largest output). ``one_segment`` is
  :func:`jaxrnn.split_time` on one device: the split's chain (inputs projected by one GEMM)
  without the split, as :func:`jaxrnn.unroll` runs it."""
  sequential = jax.jit(lambda p, x: jaxrnn.infer(p, x))
  split = jax.jit(lambda p, x: jaxrnn.infer(p, x, mesh=2))
  one_segment = jax.jit(lambda p, x: jaxrnn.split_time(p, x, mesh=1)[2:0:-1])  # (final, ys)
  one_xs, one_params = jnp.asarray(xs), params      # uncommitted: each jit places them itself
  calls = {"sequential": lambda: jax.block_until_ready(sequential(one_params, one_xs)),
           "split": lambda: jax.block_until_ready(split(one_params, one_xs)),
           "one_segment": lambda: jax.block_until_ready(one_segment(one_params, one_xs))}
  sequential_out, split_out, chain_out = (jax.device_get(calls[name]()) for name in calls)
  stats = jax.jit(lambda p, x: jaxrnn.split_time(p, x, mesh=2).stats)(one_params, one_xs)
  scale = float(np.max(np.abs(sequential_out[1])))
  difference = lambda out, to=sequential_out: max(
      float(np.max(np.abs(a - b))) for a, b in zip(out, to)) / scale     # over final and ys
  wall, cpu = interleaved_times(calls, rounds, warmup=1)
  medians = {name: float(np.median(times)) for name, times in wall.items()}
  cpu_medians = {name: float(np.median(times)) for name, times in cpu.items()}
  spread = {name: [float(min(times)), float(max(times))] for name, times in wall.items()}
  return {"sequential_s": medians["sequential"], "split_s": medians["split"],
          "one_segment_s": medians["one_segment"],
          "ratio": medians["split"] / medians["sequential"],
          "speedup": medians["sequential"] / medians["split"],
          "ratio_to_one_segment": medians["split"] / medians["one_segment"], "range_s": spread,
          "cpu_s": cpu_medians, "iterations": int(stats.iterations[0]),
          "rerun_steps": int(stats.rerun_steps[0]), "fell_back": bool(stats.fell_back[0]),
          "max_rel_diff": difference(split_out),
          "max_rel_diff_one_segment": difference(chain_out),
          "max_rel_diff_to_one_segment": difference(split_out, chain_out)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
  parser.add_argument("--rounds", type=int, default=3, help="timed calls of each kind")
  parser.add_argument("--sweep-steps", type=int, default=100_000, help="T of the sweep over g")
  parser.add_argument("--lyapunov-steps", type=int, default=20_000,
                      help="steps averaged for lambda_1")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if jax.device_count() < 2:
    raise SystemExit("long_stream.py needs 2 devices: run it as a script (jax_num_cpu_devices)")
  T, B, I, H, O = QUICK_SIZES if args.quick else SIZES
  rounds = 2 if args.quick else args.rounds
  sweep_steps = 500 if args.quick else args.sweep_steps
  lyapunov_steps = 300 if args.quick else args.lyapunov_steps
  rng = np.random.default_rng(1)
  xs = rng.standard_normal((T, B, I), dtype=np.float32)
  params = make_params(MAIN_GAIN, I, H, O)
  main_run = {"gain": MAIN_GAIN, "lambda_1": lyapunov(params, xs[:lyapunov_steps]),
              **measure(params, xs, rounds)}
  sweep = []
  for gain in QUICK_GAINS if args.quick else GAINS:
    params = make_params(gain, I, H, O)
    sweep.append({"gain": gain, "lambda_1": lyapunov(params, xs[:lyapunov_steps]),
                  **measure(params, xs[:sweep_steps], rounds)})
  peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"\nB = {B}, I = {I}, H = {H}, O = {O}, float32, 2 CPU devices; peak RSS "
        f"{peak_rss_mb:.0f} MB")
  header = ["T", "g", "lambda_1", "sequential s", "one segment s", "split s", "split / seq",
            "split / one segment", "rounds", "re-run", "fell back", "diff vs seq",
            "diff vs one segment"]
  row = lambda r, t: (t, r["gain"], f"{r['lambda_1']:+.3f}", r["sequential_s"],
                      r["one_segment_s"], r["split_s"], f"{r['ratio']:.3f}",
                      f"{r['ratio_to_one_segment']:.3f}", r["iterations"], r["rerun_steps"],
                      r["fell_back"], f"{r['max_rel_diff']:.1e}",
                      f"{r['max_rel_diff_to_one_segment']:.1e}")
  print_table(header, [row(main_run, T)] + [row(r, sweep_steps) for r in sweep])
  payload = {"machine": machine_info(), "sizes": dict(zip("TBIHO", (T, B, I, H, O))),
             "devices": 2, "rounds": rounds, "sweep_steps": sweep_steps,
             "lyapunov_steps": lyapunov_steps, "peak_rss_mb": peak_rss_mb, "main": main_run,
             "sweep": sweep}
  print(f"\nwrote {write_json('long_stream_quick' if args.quick else 'long_stream', payload)}")
  return payload


if __name__ == "__main__":
  main()
