"""Benchmark 5: the transition to chaos of a random tanh network, lambda_1 against g.

Run: ``python benchmarks/chaos.py`` (``N = 1000``, ``g`` from 0.5 to 3, 3 seeds),
``--quick`` for a smoke run. Writes ``benchmarks/results/chaos.json`` and
``chaos.png`` (``lambda_1`` against ``g``, mean-field theory beside the measurement).

The network (Molgedey, Schuchhardt & Schuster, 1992) is autonomous,
``h_t = tanh(W_hh h_{t-1})`` with ``W_hh ~ N(0, g^2 / N)`` and a random
``h_0 ~ N(0, I)``: :func:`jaxrnn.lyapunov_exponents` of a one-layer model with
``I = 1``, zero inputs, ``W_xh = 0`` and ``b_h = 0``, float64, ``--steps`` steps
of which the first ``--burn-in`` (the transient onto the attractor, and of the
QR frame) are not averaged.

Mean-field theory (in the form of Poole et al., 2016): with ``z ~ N(0, 1)``,
the variance of a unit's pre-activation is the fixed point
``q = g^2 E[tanh^2(sqrt(q) z)]``, and a perturbation grows by
``chi = g^2 E[sech^4(sqrt(q) z)]`` in squared norm per step, so
``lambda_1 = 1/2 log chi``. For ``g <= 1`` the only fixed point is ``q = 0``
and ``lambda_1 = log g``; above 1, ``q > 0`` and ``lambda_1 > 0``: chaos.
``q`` is found by fixed-point iteration, the expectations by Gauss-Hermite
quadrature. For ``g < 1`` a finite network's state dies out, ``J_t -> W_hh``, and
``lambda_1`` tends to ``log rho(W_hh)``, the log of the spectral radius (recorded
too), which exceeds ``log g`` at finite ``N``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before numpy: on a loaded 2-core machine
# its threaded eigvals of a 1000 x 1000 matrix spins for 60 s instead of 6 s single-threaded

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxrnn  # noqa: E402
from common import RESULTS, machine_info, print_table, write_json  # noqa: I001

jax.config.update("jax_enable_x64", True)

GAINS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0)
QUICK_GAINS = (0.5, 2.0)
QUADRATURE = 101                       # Gauss-Hermite nodes
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(QUADRATURE)         # weight exp(-z^2 / 2)
TOLERANCE = 0.02                       # the bound on |mean - theory| at g = 2 and 3


def expectation(f, q: float) -> float:
  """``E[f(sqrt(q) z)]``, ``z ~ N(0, 1)``, by ``QUADRATURE``-point Gauss-Hermite quadrature."""
  return float(np.sum(WEIGHTS * f(np.sqrt(q) * NODES)) / np.sqrt(2 * np.pi))


def mean_field(g: float, tol: float = 1e-14, max_iterations: int = 100_000) -> tuple[float, float]:
  """``(q, lambda_1)`` of mean-field theory for gain ``g``: ``q = g^2 E[tanh^2(sqrt(q) z)]`` by
  fixed-point iteration from ``q = g^2`` (``q = 0`` for ``g <= 1``, the only fixed point), and
  ``lambda_1 = 1/2 log(g^2 E[sech^4(sqrt(q) z)])``."""
  q = 0.0
  if g > 1:
    q = g * g
    for _ in range(max_iterations):
      q, old = g * g * expectation(lambda a: np.tanh(a) ** 2, q), q
      if abs(q - old) <= tol * q:
        break
  return q, 0.5 * np.log(g * g * expectation(lambda a: 1 / np.cosh(a) ** 4, q))


def network(g: float, size: int, seed: int) -> tuple[jaxrnn.RNNParams, jax.Array]:
  """``(params, h0 [1, N])``: ``W_hh ~ N(0, g^2 / N)``, no input weights or biases, a zero
  read-out, ``h0 ~ N(0, I)``."""
  rng = np.random.default_rng(seed)
  cell = jaxrnn.CellParams(jnp.zeros((size, 1)), jnp.asarray(
      g * rng.standard_normal((size, size)) / np.sqrt(size)), jnp.zeros(size))
  params = jaxrnn.RNNParams(((cell,),), jnp.zeros((1, size)), jnp.zeros(1))
  return params, jnp.asarray(rng.standard_normal((1, size)))


LYAPUNOV = jax.jit(jaxrnn.lyapunov_exponents, static_argnames=("k", "burn_in"))


def measure(g: float, size: int, steps: int, burn_in: int, seed: int) -> tuple[float, float]:
  """``(lambda_1, log rho(W_hh))`` of one network."""
  params, h0 = network(g, size, seed)
  exponent = LYAPUNOV(params, jnp.zeros((steps, 1)), h0, burn_in=burn_in)
  radius = np.max(np.abs(np.linalg.eigvals(np.asarray(params.layers[0][0].W_hh))))
  return float(exponent[0]), float(np.log(radius))


def plot(rows: list[dict[str, Any]], size: int, path) -> None:
  """``lambda_1`` against ``g``: theory (line), each seed (dots), their mean (circles) and, where
  the state dies out (``g <= 1``), the log of the spectral radius (crosses)."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  grid = np.linspace(0.4, 3.1, 200)
  ax.plot(grid, [mean_field(g)[1] for g in grid], "k-", label="mean-field theory")
  gains = [r["g"] for r in rows]
  for i in range(len(rows[0]["measured"])):
    ax.plot(gains, [r["measured"][i] for r in rows], ".", color="tab:blue", alpha=0.4,
            label="each seed" if i == 0 else None)
  ax.plot(gains, [r["mean"] for r in rows], "o", mfc="none", color="tab:blue",
          label=f"mean of {len(rows[0]['measured'])} seeds")
  dying = [r for r in rows if r["g"] <= 1]
  ax.plot([r["g"] for r in dying], [np.mean(r["log_radius"]) for r in dying], "x",
          color="tab:orange", label="log rho(W_hh), mean (g <= 1: the state dies out)")
  ax.axhline(0, color="gray", lw=0.8)
  ax.axvline(1, color="gray", lw=0.8, ls=":")
  ax.set(xlabel="g", ylabel="lambda_1 (per step)",
         title=f"h_t = tanh(W h_(t-1)), W ~ N(0, g^2/N), N = {size}: the transition to chaos")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="N = 200, g = 0.5 and 2, 2 seeds, 400 steps, no plot")
  parser.add_argument("--gains", nargs="+", type=float, default=list(GAINS), help="values of g")
  parser.add_argument("--size", type=int, default=1000, help="N, the number of units")
  parser.add_argument("--steps", type=int, default=2200, help="T, steps per network")
  parser.add_argument("--burn-in", type=int, default=200, help="first steps not averaged")
  parser.add_argument("--seeds", type=int, default=3, help="networks per g")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.quick:
    args.gains, args.size, args.steps, args.burn_in, args.seeds = QUICK_GAINS, 200, 400, 100, 2
  start = time.perf_counter()
  rows = []
  for g in args.gains:
    q, theory = mean_field(g)
    runs = [measure(g, args.size, args.steps, args.burn_in, seed) for seed in range(args.seeds)]
    measured, log_radius = [r[0] for r in runs], [r[1] for r in runs]
    rows.append({"g": g, "q": q, "theory": theory, "measured": measured,
                 "mean": float(np.mean(measured)), "std": float(np.std(measured)),
                 "error": float(np.mean(measured) - theory), "log_radius": log_radius})
    print(f"g={g:g}: lambda_1 {rows[-1]['mean']:+.4f} (theory {theory:+.4f}), seeds "
          + ", ".join(f"{m:+.4f}" for m in measured), flush=True)
  total = time.perf_counter() - start
  print_table(["g", "theory", "mean", "std", "mean - theory", "log g", "log rho(W)"],
              [(r["g"], f"{r['theory']:+.4f}", f"{r['mean']:+.4f}", f"{r['std']:.4f}",
                f"{r['error']:+.4f}", f"{np.log(r['g']):+.4f}",
                f"{np.mean(r['log_radius']):+.4f}") for r in rows])
  name = "chaos_quick" if args.quick else "chaos"
  payload = {"machine": machine_info(), "size": args.size, "steps": args.steps,
             "burn_in": args.burn_in, "seeds": args.seeds, "quadrature": QUADRATURE,
             "tolerance": TOLERANCE, "total_wall_s": total, "rows": rows}
  print(f"wrote {write_json(name, payload)}")
  if not args.quick:                        # (scaling.py's rule: no plot in a smoke run)
    png = RESULTS / f"{name}.png"
    plot(rows, args.size, png)
    print(f"wrote {png}")
  return payload


if __name__ == "__main__":
  main()
