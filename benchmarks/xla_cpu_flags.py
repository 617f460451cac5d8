"""Benchmark: can an XLA:CPU option make one device use every core for the per-step product?

Run: ``python benchmarks/xla_cpu_flags.py`` (the ``medium`` configuration of
``train_step.py``), ``--quick`` for a tiny smoke run, ``--configs``,
``--rounds``, ``--steps``, ``--options`` (a subset of ``OPTIONS``), ``--output NAME``.

One device runs the recurrence's ``[B, H] x [H, H]`` product on one core;
jaxrnn uses the second core only as a second device (the batch split). XLA
options are read once per process, so each option set runs in its own
process: a round starts one process per set (in a fresh order each round),
each compiles the one-device fused train step (``train_step.py``'s
``jaxrnn_fused``: Adam, summed cross-entropy, float32), runs ``--warmup``
steps, then times ``--steps`` steps and reports their median wall and CPU
time. ``cpu / wall`` near 1 means one busy core, near 2 both. The ratio
``default / option`` above 1 means the option is faster; it is the median over
rounds of each round's ratio, so slow drifts of the machine's load cancel.
The first loss is compared with the default's: an option may reorder sums,
never change the model.

The options tried (``OPTIONS``): Eigen's intra-op threads off (does XLA:CPU
thread the product at all today?), and each dot routed to XNNPACK, oneDNN or
YNNPACK, the libraries XLA:CPU can hand single dots to.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from common import machine_info, print_table, time_call, write_json  # noqa: I001
from train_step import CONFIGS, QUICK_CONFIGS, make_jaxrnn, make_problem

OPTIONS: dict[str, str] = {
    "default": "",
    "eigen_single_thread": "--xla_cpu_multi_thread_eigen=false",
    "xnnpack_dots": "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "onednn_dots": "--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "ynnpack_dots": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}
"""Name -> ``XLA_FLAGS`` of one process (on top of the caller's own ``XLA_FLAGS``)."""


def worker(sizes: Sequence[int], steps: int, warmup: int) -> dict[str, float]:
  """In a process with its ``XLA_FLAGS`` set: median wall and CPU ms of the one-device step."""
  step = make_jaxrnn(make_problem(*sizes), "fused")
  first_loss = step()
  for _ in range(warmup):
    step()
  wall, cpu = zip(*(time_call(step) for _ in range(steps)))
  return {"ms": 1e3 * float(np.median(wall)), "cpu_ms": 1e3 * float(np.median(cpu)),
          "first_loss": first_loss}


def run_option(flags: str, sizes: Sequence[int], steps: int, warmup: int) -> dict[str, Any]:
  """Runs :func:`worker` in a fresh process with ``flags`` added to ``XLA_FLAGS``."""
  env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
  argv = [sys.executable, __file__, "--worker", json.dumps([list(sizes), steps, warmup])]
  done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    return {"error": (done.stderr.strip().splitlines() or ["exit " + str(done.returncode)])[-1]}
  return json.loads(done.stdout.strip().splitlines()[-1])


def run_config(sizes: Sequence[int], options: Sequence[str], rounds: int, steps: int,
               warmup: int) -> dict[str, Any]:
  """``options`` (``"default"`` among them), one process each per round, in a fresh order each
  round; medians and ratios."""
  order = random.Random(0)
  runs: dict[str, list[dict[str, Any]]] = {name: [] for name in options}
  for _ in range(rounds):
    names = list(options)
    order.shuffle(names)
    for name in names:
      runs[name].append(run_option(OPTIONS[name], sizes, steps, warmup))
  results = {}
  base = runs["default"]
  for name, rows in runs.items():
    if any("error" in r for r in rows):
      results[name] = {"flags": OPTIONS[name], "error": next(r["error"] for r in rows if "error" in r)}
      continue
    results[name] = {
        "flags": OPTIONS[name],
        "ms": float(np.median([r["ms"] for r in rows])),
        "cpu_ms": float(np.median([r["cpu_ms"] for r in rows])),
        "cores_busy": float(np.median([r["cpu_ms"] / r["ms"] for r in rows])),
        "speedup": float(np.median([b["ms"] / r["ms"] for b, r in zip(base, rows)])),
        "loss_difference": abs(rows[0]["first_loss"] - base[0]["first_loss"]),
        "rounds_ms": [r["ms"] for r in rows]}
  return {"sizes": dict(zip("TBIHO", sizes)), "results": results}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 round, 3 steps")
  parser.add_argument("--configs", nargs="+", default=["medium"], choices=list(CONFIGS))
  parser.add_argument("--rounds", type=int, default=5, help="processes per option")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS),
                      help="option sets to run (default always runs: the ratios' reference)")
  parser.add_argument("--output", default=None,
                      help="results/<output>.json (xla_cpu_flags, or xla_cpu_flags_quick)")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  options = ["default", *(o for o in args.options if o != "default")]
  if args.quick:
    configs, rounds, steps, warmup = QUICK_CONFIGS, 1, 3, 1
  else:
    configs = {name: CONFIGS[name] for name in args.configs}
    rounds, steps, warmup = args.rounds, args.steps, args.warmup
  payload = {"machine": machine_info(), "rounds": rounds, "steps": steps, "warmup": warmup,
             "configs": {}}
  for name, sizes in configs.items():
    result = run_config(sizes, options, rounds, steps, warmup)
    payload["configs"][name] = result
    print(f"\n{name} (T, B, I, H, O) = {sizes}, one device")
    print_table(["option", "ms/step", "cpu ms/step", "cores busy", "default / option",
                 "loss difference"],
                [(n, r.get("ms", r.get("error")), r.get("cpu_ms", ""), r.get("cores_busy", ""),
                  r.get("speedup", ""), f"{r['loss_difference']:.1e}" if "ms" in r else "")
                 for n, r in result["results"].items()])
  path = write_json(args.output or ("xla_cpu_flags_quick" if args.quick else "xla_cpu_flags"),
                    payload)
  print(f"\nwrote {path}")
  return payload


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "--worker":
    print(json.dumps(worker(*json.loads(sys.argv[2]))))
  else:
    main()
