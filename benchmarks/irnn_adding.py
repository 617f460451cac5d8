"""Benchmark 4: the adding problem, IRNN against a tanh RNN (Le, Jaitly & Hinton, 2015, section 4.1).

Run: ``python benchmarks/irnn_adding.py`` (T = 150, 200, 300, 400), ``--quick``
for a smoke run. Writes ``benchmarks/results/irnn_adding.json`` and
``irnn_adding.png`` (test MSE against training step, one panel per ``T``).

Models, both one layer, ``H = --hidden`` (100), a linear read-out of the last step:

* ``irnn``: ReLU, ``init_params(init="identity")``: ``W_hh = I``,
  ``W_xh``, ``W_hy ~ N(0, 0.001^2)``, zero biases (the paper's IRNN);
* ``tanh``: tanh, ``init_params(init=--tanh-scheme)`` (``"orthogonal"``:
  ``W_hh`` a random orthogonal matrix, ``W_xh``, ``W_hy`` Glorot-uniform).

Task: :func:`jaxrnn.app.data.adding_problem`, the ``jaxrnn`` command's data (two
marked values in ``U(0, 1)``, one in each half of the sequence; the target is
their sum, read at the last step). Predicting 1 gives MSE ``1/6 ~ 0.167``.
Training: mean squared error at the last step, :func:`jaxrnn.fit` of a
:func:`jaxrnn.make_train_step` step with the default fused gradient, a fresh
batch per step (``fold_in(key, step)``), ``optax`` Adam (``--optimizer sgd``
for the paper's SGD) after clipping the global gradient norm (``--clip``).
The paper trained with SGD + clipping for up to ~10^6 steps; here the budget
is a fixed, much smaller ``--steps`` per run. Test MSE is measured on one
held-out batch of ``--test-size`` sequences every ``--eval-every`` steps.

Keep Adam's ``lr * H`` well below 1 for the IRNN: Adam's first update moves
every entry of ``W_hh = I`` by about ``lr``, a nearly rank-one change of
spectral norm up to ``lr * H`` (``lr = 1e-2``, ``H = 100`` diverges at step 1;
over ``T = 400`` steps even ``1e-3`` makes ReLU explode). The recipe: Adam at
``1e-4``, cosine-decayed to ``1e-5`` over the run, clip 1, batch 32, 32,000
steps. A run is *solved* when its final test MSE is below 10% of the
predict-the-mean baseline (``1/60``).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

import jaxrnn
from jaxrnn.app.data import adding_problem
from common import RESULTS, machine_info, print_table, write_json  # noqa: I001

LENGTHS = (150, 200, 300, 400)
QUICK_LENGTHS = (10,)
MODELS = ("irnn", "tanh")
BASELINE_MSE = 1 / 6                      # predicting E[target] = 1
SOLVED_MSE = BASELINE_MSE / 10            # the "solved": 10% of the baseline


def model_setup(name: str, hidden: int, tanh_scheme: str, key: jax.Array):
  """``(params, ModelSpec)`` of ``"irnn"`` (ReLU, identity init) or ``"tanh"``."""
  init = jax.jit(jaxrnn.init_params, static_argnums=(1, 2, 3), static_argnames="init")
  if name == "irnn":
    return init(key, 2, hidden, 1, init="identity"), jaxrnn.ModelSpec(activation="relu")
  return init(key, 2, hidden, 1, init=tanh_scheme), jaxrnn.ModelSpec(activation="tanh")


def train_one(name: str, num_steps: int, args: argparse.Namespace) -> dict[str, Any]:
  """Trains one model on the adding problem of length ``num_steps``; returns its curve."""
  key = jax.random.key(args.seed)
  k_init, k_data, k_test = jax.random.split(key, 3)
  params, model = model_setup(name, args.hidden, args.tanh_scheme, k_init)
  loss = jaxrnn.LossSpec(loss="squared_error", reduction="mean")
  lr = optax.cosine_decay_schedule(args.lr, args.steps, alpha=0.1) if args.decay else args.lr
  optimizer = jaxrnn.make_optimizer(args.optimizer, lr, clip_norm=args.clip,
                                    **({"momentum": 0.9} if args.optimizer == "sgd" else {}))
  make_batch = jax.jit(functools.partial(adding_problem, batch_size=args.batch,
                                         num_steps=num_steps))
  test = jax.jit(adding_problem, static_argnums=(1, 2))(k_test, args.test_size, num_steps)
  train_step = jaxrnn.make_train_step(optimizer, model=model, loss=loss)
  eval_step = jaxrnn.make_eval_step(model=model, loss=loss)
  curve = [(0, float(eval_step(params, test)["mse"]))]

  def callback(step, params, opt_state, metrics):
    if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
      curve.append((step + 1, float(eval_step(params, test)["mse"])))

  start = time.perf_counter()
  status = "ok"
  try:
    result = jaxrnn.fit(params, optimizer.init(params), train_step,
                        lambda s: make_batch(jax.random.fold_in(k_data, s)), args.steps,
                        progress=False, callback=callback)
    train_loss = result.history["loss"]
  except FloatingPointError as error:       # diverged: keep the curve so far
    status, train_loss = f"diverged: {error}", np.array([np.nan])
  wall = time.perf_counter() - start
  mses = [m for _, m in curve]
  return {"T": num_steps, "model": name, "status": status, "wall_s": wall,
          "final_test_mse": mses[-1], "best_test_mse": float(np.nanmin(mses)),
          "solved": bool(mses[-1] < SOLVED_MSE),
          "first_step_solved": next((s for s, m in curve if m < SOLVED_MSE), None),
          "final_train_loss_mean_last_100": float(np.mean(train_loss[-100:])),
          "curve": curve}


def plot(runs: list[dict[str, Any]], lengths: Sequence[int], path, title: str) -> None:
  """Test MSE against step, one panel per ``T``, one line per model (no pyplot)."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(max(6.5, 4 * len(lengths)), 3.8))
  axes = fig.subplots(1, len(lengths), squeeze=False)[0]
  for ax, num_steps in zip(axes, lengths):
    for run in runs:
      if run["T"] == num_steps:
        steps, mses = zip(*run["curve"])
        ax.plot(steps, mses, label=run["model"])
    ax.axhline(BASELINE_MSE, color="k", ls="--", lw=1, label="predict 1 (0.167)")
    ax.set_yscale("log")
    ax.set_title(f"T = {num_steps}")
    ax.set_xlabel("training step")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("test MSE")
  axes[0].legend()
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="T = 10, 20 training steps, H = 8, no plot")
  parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  parser.add_argument("--steps", type=int, default=32000, help="training steps per run")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--hidden", type=int, default=100)
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--decay", action=argparse.BooleanOptionalAction, default=True,
                      help="cosine-decay the learning rate to a tenth over the run")
  parser.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
  parser.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip")
  parser.add_argument("--tanh-scheme", default="orthogonal", choices=["orthogonal", "glorot"])
  parser.add_argument("--eval-every", type=int, default=1000)
  parser.add_argument("--test-size", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default=None)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  lengths = args.lengths
  if args.quick:
    lengths, args.steps, args.hidden, args.eval_every, args.test_size = QUICK_LENGTHS, 20, 8, 10, 64
  start = time.perf_counter()
  runs = []
  for num_steps in lengths:
    for name in args.models:
      runs.append(train_one(name, num_steps, args))
      r = runs[-1]
      print(f"T={num_steps} {name}: test MSE {r['final_test_mse']:.4f} in {r['wall_s']:.0f} s "
            f"({r['status']})", flush=True)
  total = time.perf_counter() - start
  print_table(["T", "model", "test MSE start", "test MSE final", "best",
               f"solved (< {SOLVED_MSE:.4f})", "first step below it", "wall s"],
              [(r["T"], r["model"], f"{r['curve'][0][1]:.4f}", f"{r['final_test_mse']:.4f}",
                f"{r['best_test_mse']:.4f}", "yes" if r["solved"] else "no",
                r["first_step_solved"] or "-", r["wall_s"]) for r in runs])
  budget = {k: getattr(args, k) for k in ("steps", "batch", "hidden", "lr", "decay", "optimizer",
                                          "clip",
                                          "tanh_scheme", "eval_every", "test_size", "seed")}
  print(f"budget: {budget}; total wall {total:.0f} s")
  name = args.output or ("irnn_adding_quick" if args.quick else "irnn_adding")
  payload = {"machine": machine_info(), "budget": budget, "lengths": list(lengths),
             "baseline_mse": BASELINE_MSE, "solved_mse": SOLVED_MSE, "total_wall_s": total,
             "runs": runs}
  print(f"wrote {write_json(name, payload)}")
  if not args.quick:                        # (scaling.py's rule: no plot in a smoke run)
    png = RESULTS / f"{name}.png"
    plot(runs, lengths, png, f"adding problem, H={args.hidden}, {args.optimizer} lr={args.lr}"
         f"{' cosine' if args.decay else ''}, "
         f"clip {args.clip}, batch {args.batch}, {args.steps} steps")
    print(f"wrote {png}")
  return payload


if __name__ == "__main__":
  main()
