"""Benchmark 1: one full training step (forward, backward, Adam), every implementation side by side.

Run: ``python benchmarks/train_step.py`` (all configurations), ``--quick`` for
a tiny smoke run, ``--impls jaxrnn_fused torch`` for a subset, ``--devices N``
for the host device count (default: every CPU core, as the ``jaxrnn``
command; set with ``jax_num_cpu_devices`` before JAX's first computation).

Implementations, all float32 on the same data and the same initial weights,
loss ``L = sum_t sum_b -log softmax(W_hy h_t + b_y)[target]``, Adam(1e-3):

* ``jaxrnn_fused``: :func:`jaxrnn.make_train_step` with the default
  ``ComputeSpec(gradient="fused")`` (hand-BPTT ``custom_vjp``), jit-compiled,
  buffers donated; ``LossSpec(reduction="sum")``, ``ModelSpec()`` (tanh).
  One device: one recurrence chain, one core busy most of the time.
* ``jaxrnn_all_cores``: the step the ``jaxrnn`` command trains with by
  default: ``make_train_step(..., mesh=<all devices>)``, the batch split over
  every host device (one chain per core, one ``psum`` of the gradients).
* ``jaxrnn_autodiff``: the same with ``ComputeSpec(gradient="autodiff")``
  (``jax.grad`` through ``lax.scan``), one device.
* ``jaxrnn_readme``: the README's step, ``make_train_step(...)`` with its
  default ``mesh="auto"`` on a batch of plain arrays (split by the step on
  every call), with ``jax_num_cpu_devices`` set as the README does.
* ``torch``: ``torch.nn.RNN`` + ``nn.Linear`` + ``torch.optim.Adam`` with
  torch's default intra-op threads (every core).
* ``flax``: ``flax.linen.RNN(nn.SimpleCell)`` + ``nn.Dense`` + ``optax.adam``, jit.
* ``numpy``: the seed's style, a Python loop over steps with hand BPTT and Adam.

Steps run interleaved (one of each implementation per round, plus a
``[1024, 1024]`` sgemm for the roofline) and the median of ``--rounds`` timed
rounds after ``--warmup`` is reported. Roofline: ``3 * 2 T B (I H + H H + H O)``
FLOPs (forward + backward matmuls) over the median sgemm GFLOP/s of the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax  # noqa: E402

if __name__ == "__main__":   # host devices, before JAX's first computation (as cli.main does)
  _devices = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--devices=")),
                  len(os.sched_getaffinity(0)))
  if "--devices" in sys.argv:
    _devices = int(sys.argv[sys.argv.index("--devices") + 1])
  jax.config.update("jax_num_cpu_devices", _devices)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxrnn  # noqa: E402
from jaxrnn.parallel import batch_mesh, shard_batch  # noqa: E402

from common import (SGEMM_SIZE, interleaved_times, machine_info, print_table,  # noqa: E402,I001
                    sgemm_calls, sgemm_gflops, write_json)

CONFIGS: dict[str, tuple[int, int, int, int, int]] = {   # (T, B, I, H, O)
    "small": (100, 32, 32, 128, 32),
    "medium": (200, 64, 64, 256, 64),
    "charlm": (100, 32, 65, 512, 65),
}
SPLIT_CONFIGS: dict[str, tuple[int, int, int, int, int]] = {   # (B/2) H^2 per device on 2
    "split_8k": (100, 64, 16, 16, 16),
    "split_33k": (50, 64, 2, 32, 2),
    "split_66k": (100, 32, 32, 64, 32),
    "demo": (50, 64, 2, 64, 2),          # the adding demo's sizes: 131k
    "split_131k": (100, 16, 32, 128, 32),
}
"""Where the split starts to pay (``jaxrnn.app.training.MIN_SPLIT_WORK``): ``--configs split_8k ...
--impls jaxrnn_fused jaxrnn_all_cores``; not run by default."""
QUICK_CONFIGS = {"tiny": (12, 4, 5, 16, 5)}
LEARNING_RATE = 1e-3
LOSS = jaxrnn.LossSpec(loss="cross_entropy", reduction="sum")   # model: jaxrnn.ModelSpec() (tanh)
IMPLS = ("jaxrnn_fused", "jaxrnn_all_cores", "torch", "flax")
"""The default rows; ``--impls`` adds ``jaxrnn_autodiff``, ``jaxrnn_readme`` and ``numpy``."""


class Weights(NamedTuple):
  """The five arrays of a one-layer Elman RNN as NumPy float32, in jaxrnn's orientation.

  (The field order is the 0.1.0 release's flat ``RNNParams``.)
  """
  W_xh: np.ndarray      # [H, I]
  W_hh: np.ndarray      # [H, H]
  W_hy: np.ndarray      # [O, H]
  b_h: np.ndarray       # [H]
  b_y: np.ndarray       # [O]


def weights_of(params: jaxrnn.RNNParams) -> Weights:
  """The :class:`Weights` of a one-layer, one-direction :class:`jaxrnn.RNNParams`."""
  (cell,), = params.layers
  return Weights(*(np.array(a) for a in (cell.W_xh, cell.W_hh, params.W_hy, cell.b_h,
                                           params.b_y)))


def rnn_params(weights: Weights) -> jaxrnn.RNNParams:
  """:class:`jaxrnn.RNNParams` (one layer, one direction) holding ``weights`` as jax arrays."""
  w = Weights(*(jnp.asarray(a) for a in weights))
  return jaxrnn.RNNParams(layers=((jaxrnn.CellParams(w.W_xh, w.W_hh, w.b_h),),),
                          W_hy=w.W_hy, b_y=w.b_y)


class Problem(NamedTuple):
  """One configuration's data and initial weights (NumPy, float32)."""
  xs: np.ndarray        # [T, B, I]
  targets: np.ndarray   # [T, B] int32
  params: Weights       # NumPy arrays in jaxrnn's orientation


def make_problem(T: int, B: int, I: int, H: int, O: int, seed: int = 0) -> Problem:
  """Random inputs ``~N(0, 1)``, random class targets, ``init_params(init="glorot")`` weights."""
  rng = np.random.default_rng(seed)
  params = jaxrnn.init_params(jax.random.key(seed), I, H, O, init="glorot", dtype=jnp.float32)
  return Problem(rng.standard_normal((T, B, I), dtype=np.float32),
                 rng.integers(0, O, (T, B)).astype(np.int32), weights_of(params))


def train_flops(T: int, B: int, I: int, H: int, O: int) -> float:
  """Matmul FLOPs of forward + backward: ``3 * 2 T B (I H + H H + H O)``."""
  return 3 * 2 * T * B * (I * H + H * H + H * O)


def jax_stepper(step: Callable, params: Any, opt_state: Any, batch: Any) -> Callable[[], float]:
  """Wraps a jitted ``(params, opt_state, batch) -> (params, opt_state, loss)`` as a blocking call.

  The call returns the loss (before the update) as a Python float.
  """
  state = [params, opt_state]

  def run():
    state[0], state[1], loss = jax.block_until_ready(step(state[0], state[1], batch))
    return float(loss)
  return run


def run_jaxrnn_step(problem: Problem, train_step: Callable, mesh: Any = None) -> Callable[[], float]:
  """A stepper for a jaxrnn ``(params, opt_state, batch) -> (params, opt_state, metrics)`` step.

  With a ``mesh`` the batch is split over it once, as the ``jaxrnn`` command's
  batches are born split (:func:`jaxrnn.parallel.placed_batches`); every
  implementation gets its batch where its step reads it.
  """
  params = rnn_params(problem.params)

  def step(params, opt_state, batch):
    params, opt_state, metrics = train_step(params, opt_state, batch)
    return params, opt_state, metrics["loss"]
  batch = jaxrnn.Batch(jnp.asarray(problem.xs), jnp.asarray(problem.targets))
  if mesh is not None:
    batch = shard_batch(batch, mesh)
  return jax_stepper(step, params, optax.adam(LEARNING_RATE).init(params), batch)


def make_jaxrnn(problem: Problem, gradient: str) -> Callable[[], float]:
  """:func:`jaxrnn.make_train_step` with ``gradient`` and a summed cross-entropy, on one device
  (``mesh=None``: the default ``"auto"`` would split over the process's devices)."""
  return run_jaxrnn_step(problem, jaxrnn.make_train_step(
      optax.adam(LEARNING_RATE), loss=LOSS, compute=jaxrnn.ComputeSpec(gradient=gradient),
      mesh=None))


def make_jaxrnn_sharded(problem: Problem) -> Callable[[], float]:
  """The fused step with the batch split over all host devices (one chain per core).

  ``make_train_step(..., mesh=jax.device_count())``, the ``jaxrnn``
  command's default step: each device runs the fused ``value_and_grad`` on
  its ``B / n`` sequences with no communication inside the recurrence, then
  one ``psum`` of the loss and gradients.
  """
  mesh = batch_mesh(jax.device_count())
  return run_jaxrnn_step(problem, jaxrnn.make_train_step(optax.adam(LEARNING_RATE), loss=LOSS,
                                                         mesh=mesh), mesh)


def make_jaxrnn_readme(problem: Problem) -> Callable[[], float]:
  """The README's step as a user writes it: ``make_train_step(optax.adam(...), loss=...)`` with
  the default ``mesh="auto"`` (the batch split over every device that divides it) and a batch of
  plain arrays, which the step itself splits on every call."""
  return run_jaxrnn_step(problem, jaxrnn.make_train_step(optax.adam(LEARNING_RATE), loss=LOSS))


def make_torch(problem: Problem) -> Callable[[], float]:
  """``torch.nn.RNN`` + ``nn.Linear`` + ``torch.optim.Adam``, torch's default intra-op threads."""
  import torch
  p = problem.params
  hidden, inputs = p.W_xh.shape
  rnn = torch.nn.RNN(inputs, hidden, nonlinearity="tanh")
  out = torch.nn.Linear(hidden, p.W_hy.shape[0])
  with torch.no_grad():
    for name, value in (("weight_ih_l0", p.W_xh), ("weight_hh_l0", p.W_hh),
                        ("bias_ih_l0", p.b_h), ("bias_hh_l0", np.zeros_like(p.b_h))):
      getattr(rnn, name).copy_(torch.from_numpy(value))
    out.weight.copy_(torch.from_numpy(p.W_hy))
    out.bias.copy_(torch.from_numpy(p.b_y))
  optimizer = torch.optim.Adam([*rnn.parameters(), *out.parameters()], lr=LEARNING_RATE)
  xs = torch.from_numpy(problem.xs)
  targets = torch.from_numpy(problem.targets).long().reshape(-1)

  def run():
    optimizer.zero_grad(set_to_none=True)
    hs, _ = rnn(xs)                                                     # [T, B, H]
    logits = out(hs)                                                    # [T, B, O]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets,
                                             reduction="sum")
    loss.backward()
    optimizer.step()
    return loss.item()
  return run


def make_flax(problem: Problem) -> Callable[[], float]:
  """``flax.linen.RNN(nn.SimpleCell)`` + ``nn.Dense`` + ``optax.adam``, jit-compiled."""
  import flax.linen as nn
  p = problem.params

  class Model(nn.Module):
    hidden: int
    outputs: int

    @nn.compact
    def __call__(self, xs):
      hs = nn.RNN(nn.SimpleCell(self.hidden), time_major=True)(xs)      # [T, B, H]
      return nn.Dense(self.outputs)(hs)                                 # [T, B, O]

  model = Model(p.W_hh.shape[0], p.W_hy.shape[0])
  params = jax.tree.map(jnp.asarray, {"params": {
      "SimpleCell_0": {"i": {"kernel": p.W_xh.T, "bias": p.b_h}, "h": {"kernel": p.W_hh.T}},
      "Dense_0": {"kernel": p.W_hy.T, "bias": p.b_y}}})
  expected = jax.eval_shape(model.init, jax.random.key(0), problem.xs)
  assert jax.tree.structure(params) == jax.tree.structure(expected), expected
  optimizer = optax.adam(LEARNING_RATE)

  def loss_fn(params, xs, targets):
    logits = model.apply(params, xs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  batch = (jnp.asarray(problem.xs), jnp.asarray(problem.targets))
  return jax_stepper(jax.jit(step, donate_argnums=(0, 1)), params, optimizer.init(params), batch)


def make_numpy(problem: Problem) -> Callable[[], float]:
  """The seed's style: a Python loop over steps, hand BPTT, NumPy Adam."""
  params = [np.array(a) for a in problem.params]                       # W_xh, W_hh, W_hy, b_h, b_y
  moments = [[np.zeros_like(a) for a in params] for _ in range(2)]
  count = [0]
  xs, targets = problem.xs, problem.targets
  rows = np.arange(xs.shape[1])

  def run():
    W_xh, W_hh, W_hy, b_h, b_y = params
    T, B, _ = xs.shape
    hs = np.zeros((T + 1, B, W_hh.shape[0]), np.float32)               # h_0..h_T
    ps = np.empty((T, B, W_hy.shape[0]), np.float32)
    loss = 0.0
    for t in range(T):
      hs[t + 1] = np.tanh(xs[t] @ W_xh.T + hs[t] @ W_hh.T + b_h)
      z = hs[t + 1] @ W_hy.T + b_y
      e = np.exp(z - z.max(axis=1, keepdims=True))
      ps[t] = e / e.sum(axis=1, keepdims=True)
      loss -= np.log(ps[t][rows, targets[t]]).sum()
    grads = [np.zeros_like(a) for a in params]
    dh_next = np.zeros_like(hs[0])
    for t in reversed(range(T)):
      dy = ps[t].copy()
      dy[rows, targets[t]] -= 1
      grads[2] += dy.T @ hs[t + 1]
      grads[4] += dy.sum(axis=0)
      draw = (1 - hs[t + 1] ** 2) * (dy @ W_hy + dh_next)
      grads[0] += draw.T @ xs[t]
      grads[1] += draw.T @ hs[t]
      grads[3] += draw.sum(axis=0)
      dh_next = draw @ W_hh
    count[0] += 1
    b1, b2, eps = 0.9, 0.999, 1e-8
    for a, g, m, v in zip(params, grads, *moments):
      m *= b1
      m += (1 - b1) * g
      v *= b2
      v += (1 - b2) * g * g
      a -= LEARNING_RATE * (m / (1 - b1 ** count[0])) / (np.sqrt(v / (1 - b2 ** count[0])) + eps)
    return float(loss)
  return run


MAKERS: dict[str, Callable[[Problem], Callable[[], float]]] = {
    "jaxrnn_fused": lambda problem: make_jaxrnn(problem, "fused"),
    "jaxrnn_autodiff": lambda problem: make_jaxrnn(problem, "autodiff"),
    "jaxrnn_all_cores": make_jaxrnn_sharded,
    "jaxrnn_readme": make_jaxrnn_readme,
    "torch": make_torch,
    "flax": make_flax,
    "numpy": make_numpy,
}


def run_config(sizes: tuple[int, int, int, int, int], impls: Sequence[str], rounds: int,
               warmup: int, sgemm_size: int = SGEMM_SIZE) -> dict[str, Any]:
  """Times ``impls`` interleaved on one configuration; returns medians, ratios and roofline.

  ``sgemm_size`` is ``n`` of the ``[n, n] x [n, n]`` matmul that measures the roofline.
  """
  problem = make_problem(*sizes)
  calls = {name: MAKERS[name](problem) for name in impls}
  first_losses = {name: call() for name, call in calls.items()}   # same data: same loss
  times, cpu = interleaved_times(calls, rounds, warmup)
  # The roofline after the implementations, not among them: NumPy's BLAS threads keep spinning
  # for seconds after a large sgemm (the small jaxrnn step: 4.7 ms before one, 6.2 ms after).
  gflops = sgemm_gflops(interleaved_times(sgemm_calls(sgemm_size), rounds, warmup)[0], sgemm_size)
  flops = train_flops(*sizes)
  reference, cpu_reference = np.median(times[impls[0]]), np.median(cpu[impls[0]])
  results = {}
  for name in impls:
    median, cpu_median = float(np.median(times[name])), float(np.median(cpu[name]))
    results[name] = {"ms": 1e3 * median, "first_loss": first_losses[name],
                     "ratio_to_jaxrnn": median / reference,
                     "roofline_pct": 100 * flops / median / (gflops * 1e9),
                     "cpu_ms": 1e3 * cpu_median, "cpu_ratio_to_jaxrnn": cpu_median / cpu_reference,
                     **{f"speedup_over_{other}": float(np.median(times[other])) / median
                        for other in ("torch", "flax") if other in impls},
                     "times_ms": [1e3 * t for t in times[name]]}
  return {"sizes": dict(zip("TBIHO", sizes)), "flops": flops, "sgemm_gflops": gflops,
          "results": results}


def torch_threads() -> int | None:
  """torch's intra-op thread count (its default unless changed), or ``None`` without torch."""
  try:
    import torch
  except ImportError:
    return None
  return torch.get_num_threads()


def scaling_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
  """1 device (``jaxrnn_fused``) vs all devices (``jaxrnn_all_cores``), per configuration."""
  rows = []
  for name, result in payload["configs"].items():
    r = result["results"]
    if "jaxrnn_fused" not in r or "jaxrnn_all_cores" not in r:
      continue
    for devices, impl in ((1, "jaxrnn_fused"), (jax.device_count(), "jaxrnn_all_cores")):
      speedup = r["jaxrnn_fused"]["ms"] / r[impl]["ms"]
      rows.append({"config": name, "devices": devices, "ms": r[impl]["ms"], "speedup": speedup,
                   "efficiency_pct": 100 * speedup / devices,
                   "roofline_pct": r[impl]["roofline_pct"]})
  return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, jaxrnn only, few rounds")
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS),
                      choices=list(CONFIGS) + list(SPLIT_CONFIGS))
  parser.add_argument("--impls", nargs="+", default=None, choices=list(MAKERS))
  parser.add_argument("--rounds", type=int, default=20, help="timed steps per implementation")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--devices", type=int, default=None,
                      help="host devices (set before jax's first computation); default: every "
                           "CPU core; jaxrnn_all_cores splits the batch over them")
  parser.add_argument("--output", default=None,
                      help="results/<output>.json (train_step, or train_step_quick with --quick)")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.quick:
    configs, impls, rounds, warmup = QUICK_CONFIGS, ["jaxrnn_fused", "jaxrnn_autodiff"], 3, 1
  else:
    configs = {name: {**CONFIGS, **SPLIT_CONFIGS}[name] for name in args.configs}
    impls = args.impls or list(IMPLS)
    rounds, warmup = args.rounds, args.warmup
  payload = {"machine": {**machine_info(), "torch_threads": torch_threads()}, "rounds": rounds,
             "warmup": warmup, "configs": {}}
  for name, sizes in configs.items():
    result = run_config(sizes, impls, rounds, warmup)
    payload["configs"][name] = result
    print(f"\n{name} (T, B, I, H, O) = {sizes}, sgemm {result['sgemm_gflops']:.1f} GFLOP/s")
    others = [o for o in ("torch", "flax") if o in impls]
    rows = [(impl, r["ms"], r["ratio_to_jaxrnn"], *(r[f"speedup_over_{o}"] for o in others),
             r["roofline_pct"], r["cpu_ms"], f"{r['first_loss']:.4f}")
            for impl, r in result["results"].items()]
    print_table(["impl", "ms/step", "x jaxrnn_fused", *(f"{o} / impl" for o in others),
                 "% roofline", "cpu ms/step", "first loss"], rows)
  scaling = scaling_rows(payload)
  if scaling:
    payload["scaling"] = scaling
    print(f"\nscaling of the jaxrnn step with the device count ({jax.device_count()} devices)")
    print_table(["config", "devices", "ms/step", "speed-up", "efficiency %", "% roofline"],
                [(s["config"], s["devices"], s["ms"], s["speedup"], s["efficiency_pct"],
                  s["roofline_pct"]) for s in scaling])
  path = write_json(args.output or ("train_step_quick" if args.quick else "train_step"), payload)
  print(f"\nwrote {path}")
  return payload


if __name__ == "__main__":
  main()
