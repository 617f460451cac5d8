"""Benchmark: the train step of jaxrnn's Flax NNX and Equinox layers against each framework's own RNN.

Run: ``python benchmarks/layers.py`` (the ``small``, ``medium`` and ``charlm``
sizes of ``train_step.py``), ``--quick`` for a tiny smoke run, ``--configs``,
``--rounds``, ``--warmup``, ``--output NAME``.

The model and loss are ``train_step.py``'s: a one-layer tanh RNN with a read-out,
``L = sum_t sum_b -log softmax(W_hy h_t + b_y)[target]``, Adam(1e-3), float32,
one device, the same data and initial weights for all. Implementations:

* ``jaxrnn_step``: :func:`jaxrnn.make_train_step` (``mesh=None``), jaxrnn's
  functional step: the yardstick of the layers.
* ``jaxrnn_nnx``: :class:`jaxrnn.nnx.RNN` with its read-out, trained with
  ``nnx.Optimizer`` and ``nnx.value_and_grad`` in Flax's functional training
  loop (``nnx.split``/``nnx.merge`` around ``jax.jit``).
* ``flax_nnx``: Flax's own ``nnx.RNN(nnx.SimpleCell)`` and an ``nnx.Linear``
  head, in the same training step.
* ``jaxrnn_equinox``: :class:`jaxrnn.equinox.RNN` with its read-out,
  ``eqx.filter_value_and_grad`` and ``optax.adam`` under ``jax.jit`` over the
  model's arrays (``eqx.partition``/``eqx.combine``).
* ``equinox_scan``: an Equinox module over ``lax.scan`` (the usual way to write
  an RNN in Equinox), in the same training step.

Steps run interleaved (``common.interleaved_times``); medians of wall and
process CPU time, and the ratios: each framework's own layer over jaxrnn's
(above 1: jaxrnn's layer is faster) and each jaxrnn layer over the functional
step (above 1: the layer costs more).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import interleaved_times, machine_info, print_table, write_json  # noqa: I001
from train_step import (CONFIGS, LEARNING_RATE, QUICK_CONFIGS, Problem, jax_stepper, make_jaxrnn,
                        make_problem, rnn_params)

IMPLS = ("jaxrnn_step", "jaxrnn_nnx", "flax_nnx", "jaxrnn_equinox", "equinox_scan")
PAIRS = {"nnx": ("jaxrnn_nnx", "flax_nnx"), "equinox": ("jaxrnn_equinox", "equinox_scan")}
"""Framework -> (jaxrnn's layer, the framework's own)."""
TARGETS = {"speedup_over_own": 1.15, "over_functional": 1.05}
"""What the layers aim at: >= 1.15x the framework's own layer, within 5 % of the functional step."""


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """``sum_t sum_b -log softmax(logits)[target]``: ``train_step.py``'s loss."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()


def nnx_stepper(model: Any, problem: Problem) -> Callable[[], float]:
  """A blocking step of an NNX ``model`` (``xs -> (logits, ...)``): ``nnx.Optimizer`` and
  ``nnx.value_and_grad`` in Flax's functional training loop (``nnx.split`` once, ``jax.jit``
  over the states, ``nnx.merge`` inside), which Flax's performance guide advises for a step
  called many times: a plain ``nnx.jit`` call walks the model and optimizer in Python first."""
  from flax import nnx
  model_def, model_state = nnx.split(model)
  optimizer_def, optimizer_state = nnx.split(
      nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param))
  batch = (jnp.asarray(problem.xs), jnp.asarray(problem.targets))

  @functools.partial(jax.jit, donate_argnums=(0, 1))        # as make_train_step donates
  def step(model_state, optimizer_state, batch):
    xs, targets = batch
    model, optimizer = nnx.merge(model_def, model_state), nnx.merge(optimizer_def, optimizer_state)
    loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(xs)[0], targets))(model)
    optimizer.update(model, grads)
    return nnx.state(model), nnx.state(optimizer), loss
  return jax_stepper(step, model_state, optimizer_state, batch)


def make_jaxrnn_nnx(problem: Problem) -> Callable[[], float]:
  """:class:`jaxrnn.nnx.RNN` holding the problem's weights, read-out included."""
  import jaxrnn.nnx
  return nnx_stepper(jaxrnn.nnx.RNN.from_params(rnn_params(problem.params)), problem)


def make_flax_nnx(problem: Problem) -> Callable[[], float]:
  """Flax's ``nnx.RNN(nnx.SimpleCell)`` + ``nnx.Linear``: ``dense_i.kernel = W_xh^T``,
  ``dense_i.bias = b_h``, ``dense_h.kernel = W_hh^T``, ``head.kernel = W_hy^T``."""
  from flax import nnx
  p = problem.params
  hidden, inputs = p.W_xh.shape

  class Model(nnx.Module):
    def __init__(self):
      cell = nnx.SimpleCell(inputs, hidden, rngs=nnx.Rngs(0))
      cell.dense_i.kernel[...], cell.dense_i.bias[...] = p.W_xh.T, p.b_h
      cell.dense_h.kernel[...] = p.W_hh.T
      self.rnn = nnx.RNN(cell, time_major=True)
      self.head = nnx.Linear(hidden, p.W_hy.shape[0], rngs=nnx.Rngs(0))
      self.head.kernel[...], self.head.bias[...] = p.W_hy.T, p.b_y

    def __call__(self, xs):                                     # [T, B, I] -> ([T, B, O], [B, H])
      final, hs = self.rnn(xs, return_carry=True)
      return self.head(hs), final

  return nnx_stepper(Model(), problem)


def equinox_stepper(model: Any, problem: Problem) -> Callable[[], float]:
  """A blocking step of an Equinox ``model`` (``xs -> (logits, ...)``):
  ``eqx.filter_value_and_grad``, ``optax.adam``, under ``jax.jit`` over the model's arrays
  (``eqx.partition`` outside, ``eqx.combine`` inside), as Equinox allows for a step called many
  times: ``eqx.filter_jit`` filters the whole model on every call."""
  import equinox as eqx
  optimizer = optax.adam(LEARNING_RATE)
  batch = (jnp.asarray(problem.xs), jnp.asarray(problem.targets))
  params, static = eqx.partition(model, eqx.is_array)

  @functools.partial(jax.jit, donate_argnums=(0, 1))        # as make_train_step donates
  def step(params, opt_state, batch):
    xs, targets = batch
    loss_fn = lambda m: cross_entropy(m(xs)[0], targets)
    loss, grads = eqx.filter_value_and_grad(loss_fn)(eqx.combine(params, static))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(params, updates), opt_state, loss
  return jax_stepper(step, params, optimizer.init(params), batch)


def make_jaxrnn_equinox(problem: Problem) -> Callable[[], float]:
  """:class:`jaxrnn.equinox.RNN` holding the problem's weights, read-out included."""
  import jaxrnn.equinox
  return equinox_stepper(jaxrnn.equinox.RNN.from_params(rnn_params(problem.params)), problem)


def make_equinox_scan(problem: Problem) -> Callable[[], float]:
  """A one-layer Elman RNN with a read-out as an ``eqx.Module`` over ``lax.scan``."""
  import equinox as eqx

  class ScanRNN(eqx.Module):
    W_xh: jax.Array     # [H, I]
    W_hh: jax.Array     # [H, H]
    b_h: jax.Array      # [H]
    W_hy: jax.Array     # [O, H]
    b_y: jax.Array      # [O]

    def __call__(self, xs):                                     # [T, B, I] -> ([T, B, O], [B, H])
      def step(h, x):
        h = jnp.tanh(x @ self.W_xh.T + h @ self.W_hh.T + self.b_h)
        return h, h
      h0 = jnp.zeros((xs.shape[1], self.W_hh.shape[0]), xs.dtype)
      final, hs = jax.lax.scan(step, h0, xs)
      return hs @ self.W_hy.T + self.b_y, final

  p = problem.params
  model = ScanRNN(*(jnp.asarray(a) for a in (p.W_xh, p.W_hh, p.b_h, p.W_hy, p.b_y)))
  return equinox_stepper(model, problem)


MAKERS: dict[str, Callable[[Problem], Callable[[], float]]] = {
    "jaxrnn_step": lambda problem: make_jaxrnn(problem, "fused"),
    "jaxrnn_nnx": make_jaxrnn_nnx,
    "flax_nnx": make_flax_nnx,
    "jaxrnn_equinox": make_jaxrnn_equinox,
    "equinox_scan": make_equinox_scan,
}


def run_config(sizes: tuple[int, int, int, int, int], rounds: int, warmup: int) -> dict[str, Any]:
  """Times every implementation interleaved on one configuration; medians and ratios."""
  problem = make_problem(*sizes)
  calls = {name: MAKERS[name](problem) for name in IMPLS}
  first_losses = {name: call() for name, call in calls.items()}   # same data: same loss
  wall, cpu = interleaved_times(calls, rounds, warmup)
  ms = {name: 1e3 * float(np.median(wall[name])) for name in IMPLS}
  cpu_ms = {name: 1e3 * float(np.median(cpu[name])) for name in IMPLS}
  results = {name: {"ms": ms[name], "cpu_ms": cpu_ms[name], "first_loss": first_losses[name],
                    "times_ms": [1e3 * t for t in wall[name]],
                    "cpu_times_ms": [1e3 * t for t in cpu[name]]} for name in IMPLS}
  func = "jaxrnn_step"
  pairs = {framework: {
      "speedup_over_own": ms[own] / ms[ours], "cpu_speedup_over_own": cpu_ms[own] / cpu_ms[ours],
      "over_functional": ms[ours] / ms[func], "cpu_over_functional": cpu_ms[ours] / cpu_ms[func]}
      for framework, (ours, own) in PAIRS.items()}
  for r in pairs.values():
    r["meets_targets"] = (r["speedup_over_own"] >= TARGETS["speedup_over_own"]
                          and r["over_functional"] <= TARGETS["over_functional"])
  return {"sizes": dict(zip("TBIHO", sizes)), "results": results, "pairs": pairs}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds")
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
  parser.add_argument("--rounds", type=int, default=20, help="timed steps per implementation")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--output", default=None,
                      help="results/<output>.json (layers, or layers_quick with --quick)")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.quick:
    configs, rounds, warmup = QUICK_CONFIGS, 2, 1
  else:
    configs = {name: CONFIGS[name] for name in args.configs}
    rounds, warmup = args.rounds, args.warmup
  payload = {"machine": machine_info(), "rounds": rounds, "warmup": warmup, "targets": TARGETS,
             "configs": {}}
  for name, sizes in configs.items():
    result = run_config(sizes, rounds, warmup)
    payload["configs"][name] = result
    print(f"\n{name} (T, B, I, H, O) = {sizes}")
    print_table(["impl", "ms/step", "cpu ms/step", "first loss"],
                [(impl, r["ms"], r["cpu_ms"], f"{r['first_loss']:.4f}")
                 for impl, r in result["results"].items()])
    print_table(["framework", "own / jaxrnn layer (wall, cpu)", "layer / functional (wall, cpu)",
                 "targets met"],
                [(f, f"{r['speedup_over_own']:.3f}, {r['cpu_speedup_over_own']:.3f}",
                  f"{r['over_functional']:.3f}, {r['cpu_over_functional']:.3f}",
                  r["meets_targets"]) for f, r in result["pairs"].items()])
  path = write_json(args.output or ("layers_quick" if args.quick else "layers"), payload)
  print(f"\nwrote {path}")
  return payload


if __name__ == "__main__":
  main()
