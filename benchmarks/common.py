"""Shared helpers of the benchmarks: timing, the sgemm roofline, machine info, tables, JSON.

Import this module only after ``XLA_FLAGS`` is final: it imports ``jax``. Run on
its own (``python benchmarks/common.py``) it prints the machine info that heads
every result file and this machine's sgemm GFLOP/s (the roofline's ceiling).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SGEMM_SIZE = 1024


def time_call(fn: Callable[[], Any]) -> tuple[float, float]:
  """``(wall, cpu)`` seconds taken by ``fn()``, which must block until its work is done.

  ``cpu`` is this process's CPU time over all its threads: unlike wall time it
  hardly moves when other processes load the machine (spin-waiting threads
  inflate it, though).
  """
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_times(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int,
                      seed: int = 0) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
  """Runs every ``fn`` twice per round, timing the second call; ``warmup`` untimed rounds first.

  Interleaving exposes every implementation to the same background load, so
  ratios stay meaningful on a noisy machine. The untimed call just before
  each timed one makes every ``fn`` follow itself, as in a training loop: the
  BLAS/OpenMP worker threads of a NumPy or torch call keep spinning for a
  while after it returns and slow down whatever runs next (charlm, quiet
  machine: the same jaxrnn step took 131.9 ms right after the NumPy
  implementation's step and 78.8 ms right after Flax's step), so with one
  call per round the ``fn`` after a NumPy one always paid for it. The untimed
  call does not absorb all of it (small, quiet machine: a 4.8 ms jaxrnn step
  took 5.6 ms after torch's step), so each round runs the ``fns`` in a fresh
  order (``random.Random(seed)``): every ``fn`` follows every other equally
  often in expectation, none always follows torch. Returns ``(wall, cpu)``:
  seconds per call of each ``fn``.
  """
  order = random.Random(seed)
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  wall: dict[str, list[float]] = {name: [] for name in fns}
  cpu: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(rounds):
    names = list(fns)
    order.shuffle(names)
    for name in names:
      fn = fns[name]
      fn()
      elapsed, busy = time_call(fn)
      wall[name].append(elapsed)
      cpu[name].append(busy)
  return wall, cpu


def sgemm_calls(size: int = SGEMM_SIZE) -> dict[str, Callable[[], Any]]:
  """One ``[n, n] x [n, n]`` float32 matmul by XLA and by NumPy's BLAS, as blocking calls."""
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  matmul = jax.jit(jnp.matmul)
  return {"sgemm_xla": lambda: matmul(ja, jb).block_until_ready(),
          "sgemm_numpy": lambda: a @ b}


def sgemm_gflops(times: dict[str, list[float]], size: int = SGEMM_SIZE) -> float:
  """The machine's sgemm GFLOP/s: the faster of XLA's and NumPy's median, ``2 n^3 / t``."""
  return max(2 * size**3 / np.median(times[name]) / 1e9 for name in ("sgemm_xla", "sgemm_numpy"))


def machine_info() -> dict[str, Any]:
  """CPU model, core count, load, library versions and the date, for the result files."""
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                  if line.startswith("Model name")), platform.processor())
  except OSError:
    model = platform.processor()
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "cpu": model,
      "cores": os.cpu_count(),
      "loadavg": os.getloadavg(),
      "jax": jax.__version__,
      "jax_devices": len(jax.devices()),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
  """Prints ``rows`` under ``header`` as a Markdown table (floats to 2 decimals)."""
  cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
  widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
  line = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"
  print(line(header))
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for row in cells:
    print(line(row))


def write_json(name: str, payload: dict[str, Any]) -> Path:
  """Writes ``payload`` to ``benchmarks/results/<name>.json`` and returns the path."""
  RESULTS.mkdir(exist_ok=True)
  path = RESULTS / f"{name}.json"
  path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
  return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Prints :func:`machine_info` and the sgemm GFLOP/s of ``--size``; returns both."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=SGEMM_SIZE, help="n of the [n, n] sgemm")
  parser.add_argument("--rounds", type=int, default=5, help="timed sgemms of each kind")
  args = parser.parse_args(argv)
  times, _ = interleaved_times(sgemm_calls(args.size), args.rounds, warmup=1)
  info = {**machine_info(), "sgemm_size": args.size,
          "sgemm_gflops": sgemm_gflops(times, args.size)}
  print(json.dumps(info, indent=2, default=float))
  return info


if __name__ == "__main__":
  main()
