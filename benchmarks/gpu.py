"""jaxrnn on a GPU: lax.scan vs the persistent Pallas kernels, Flax and torch cuDNN, one command.

    python benchmarks/gpu.py            # on a GPU machine: jax[cuda], torch with CUDA, flax
    python benchmarks/gpu.py --quick    # anywhere: tiny sizes, kernels in interpret mode off a GPU

Prints three Markdown tables and writes ``benchmarks/results/gpu.json``
(``gpu_quick.json`` with ``--quick``), recording the device:

1. train step (loss + gradient + Adam), median ms, at every config
   ``(T, B, I, H, O)``: jaxrnn with ``recurrence="scan"`` and ``"kernel"``,
   each at ``precision="highest"`` and ``"default"`` (TF32) and in bfloat16, Flax
   ``nn.RNN(SimpleCell)``, torch ``nn.RNN`` (cuDNN) with TF32 off and on;
2. forward only (inference, ``jaxrnn.unroll``, torch under ``no_grad``);
3. the cost per time step in microseconds at ``(4096, 16, 16, 64, 16)``;
4. each implementation's forward error: the largest absolute difference of its
   outputs from a float64 NumPy loop on the same weights and inputs.

A kernel row whose ``W_hh`` exceeds the on-chip budget
(:func:`jaxrnn.kernels.fits_on_chip`) is still tried (forced ``"kernel"``);
if it fails to compile the cell says ``fail`` and the JSON keeps the error.
The cuDNN rows are skipped when ``torch.cuda`` is unavailable. Every
implementation runs the same weights; each timed call follows an untimed one
of the same implementation (:func:`common.interleaved_times`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from common import interleaved_times, machine_info, print_table, write_json  # noqa: E402

import jaxrnn  # noqa: E402
from jaxrnn import kernels  # noqa: E402

CONFIGS = {
    "small": (100, 32, 32, 128, 32),
    "medium": (200, 64, 64, 256, 64),
    "charlm": (100, 32, 65, 512, 65),
    "big": (256, 256, 256, 1024, 256),
    "long": (2048, 64, 64, 256, 64),
    "wide_batch": (500, 1024, 32, 128, 32),
}
PER_STEP = (4096, 16, 16, 64, 16)
QUICK_CONFIGS = {"tiny": (8, 4, 3, 8, 3), "tiny_wide": (6, 20, 3, 20, 3)}
QUICK_PER_STEP = (32, 2, 2, 8, 2)
LEARNING_RATE = 1e-3
JAXRNN = {f"jaxrnn_{r}_{p}": jaxrnn.ComputeSpec(recurrence=r, precision=p)
          for r in ("scan", "kernel") for p in ("highest", "default")}
JAXRNN.update({f"jaxrnn_{r}_bf16": jaxrnn.ComputeSpec(recurrence=r, dtype="bfloat16")
               for r in ("scan", "kernel")})
TORCH = {"cudnn_fp32": False, "cudnn_tf32": True}


def problem(sizes: Sequence[int], seed: int = 0):
  """``init_params``' default ``N(0, 0.01^2)`` weights (one layer, one direction), inputs and
  class targets, float32."""
  T, B, I, H, O = sizes
  params = jaxrnn.init_params(jax.random.key(seed), I, H, O, init="normal", dtype=jnp.float32)
  rng = np.random.default_rng(seed)
  xs = rng.standard_normal((T, B, I)).astype(np.float32)
  targets = rng.integers(0, O, (T, B))
  return params, xs, targets


def numpy_forward(sizes) -> np.ndarray:
  """The oracle for the error column: ``y_t = W_hy tanh(W_xh x_t + W_hh h_{t-1} + b_h) + b_y``
  in float64, a NumPy loop over time."""
  params, xs, _ = problem(sizes)
  cell = params.layers[0][0]
  W_xh, W_hh, b_h, W_hy, b_y = (np.asarray(a, np.float64) for a in
                                (cell.W_xh, cell.W_hh, cell.b_h, params.W_hy, params.b_y))
  h = np.zeros((xs.shape[1], W_hh.shape[0]))
  ys = []
  for x in xs.astype(np.float64):
    h = np.tanh(x @ W_xh.T + h @ W_hh.T + b_h)
    ys.append(h @ W_hy.T + b_y)
  return np.stack(ys)


def blocking(fn: Callable[[], Any]) -> Callable[[], Any]:
  return lambda: jax.block_until_ready(fn())


def jaxrnn_calls(sizes, compute: jaxrnn.ComputeSpec) -> dict[str, Callable[[], Any]]:
  params, xs, targets = problem(sizes)
  batch = jaxrnn.Batch(jnp.asarray(xs), jnp.asarray(targets))
  optimizer = optax.adam(LEARNING_RATE)
  step = jaxrnn.make_train_step(optimizer, compute=compute)            # donates params, opt_state
  kept = jax.tree.map(jnp.array, params)                                 # a copy for the forward
  state = {"params": params, "opt": optimizer.init(params)}

  def train():
    state["params"], state["opt"], metrics = step(state["params"], state["opt"], batch)
    return metrics

  forward = jax.jit(lambda p, x: jaxrnn.unroll(p, x, compute=compute).ys)
  return {"train": blocking(train), "forward": blocking(lambda: forward(kept, batch.xs))}


def flax_calls(sizes) -> dict[str, Callable[[], Any]]:
  import flax.linen as nn
  params, xs, targets = problem(sizes)
  cell = params.layers[0][0]

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      hs = nn.RNN(nn.SimpleCell(cell.W_hh.shape[0]), time_major=True)(x)
      return nn.Dense(params.W_hy.shape[0])(hs)

  model = Model()
  variables = {"params": {
      "SimpleCell_0": {"i": {"kernel": cell.W_xh.T, "bias": cell.b_h}, "h": {"kernel": cell.W_hh.T}},
      "Dense_0": {"kernel": params.W_hy.T, "bias": params.b_y}}}
  optimizer = optax.adam(LEARNING_RATE)

  def loss_fn(v, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(v, x), y).sum()

  @jax.jit
  def step(v, opt, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(v, x, y)
    updates, opt = optimizer.update(grads, opt, v)
    return optax.apply_updates(v, updates), opt, loss

  x, y = jnp.asarray(xs), jnp.asarray(targets)
  state = {"v": variables, "opt": optimizer.init(variables)}

  def train():
    state["v"], state["opt"], loss = step(state["v"], state["opt"], x, y)
    return loss

  forward = jax.jit(model.apply)
  return {"train": blocking(train), "forward": blocking(lambda: forward(variables, x))}


def torch_calls(sizes, tf32: bool) -> dict[str, Callable[[], Any]]:
  import torch
  params, xs, targets = problem(sizes)
  cell = params.layers[0][0]
  T, B, I, H, O = sizes
  device = torch.device("cuda")
  rnn = torch.nn.RNN(I, H, nonlinearity="tanh").to(device)
  readout = torch.nn.Linear(H, O).to(device)
  with torch.no_grad():
    rnn.weight_ih_l0.copy_(torch.from_numpy(np.asarray(cell.W_xh)))
    rnn.weight_hh_l0.copy_(torch.from_numpy(np.asarray(cell.W_hh)))
    rnn.bias_ih_l0.copy_(torch.from_numpy(np.asarray(cell.b_h)))
    rnn.bias_hh_l0.zero_()
    readout.weight.copy_(torch.from_numpy(np.asarray(params.W_hy)))
    readout.bias.copy_(torch.from_numpy(np.asarray(params.b_y)))
  optimizer = torch.optim.Adam([*rnn.parameters(), *readout.parameters()], lr=LEARNING_RATE)
  x = torch.from_numpy(xs).to(device)
  y = torch.from_numpy(targets).to(device)
  loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

  def with_tf32(fn):
    def run():
      torch.backends.cuda.matmul.allow_tf32 = tf32
      torch.backends.cudnn.allow_tf32 = tf32
      out = fn()
      torch.cuda.synchronize()
      return out
    return run

  def train():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(readout(rnn(x)[0]).reshape(-1, O), y.reshape(-1))
    loss.backward()
    optimizer.step()
    return loss

  def forward():
    with torch.no_grad():
      return readout(rnn(x)[0])

  return {"train": with_tf32(train), "forward": with_tf32(forward)}


def implementations(sizes, quick: bool) -> dict[str, Callable[[], dict[str, Callable]]]:
  """Name -> a builder of ``{"train": fn, "forward": fn}`` (built lazily: a failure is one cell)."""
  impls: dict[str, Callable[[], dict[str, Callable]]] = {
      name: (lambda c=compute: jaxrnn_calls(sizes, c)) for name, compute in JAXRNN.items()}
  impls["flax"] = lambda: flax_calls(sizes)
  if torch_cuda():
    impls.update({name: (lambda t=tf32: torch_calls(sizes, t)) for name, tf32 in TORCH.items()})
  return impls


def torch_cuda() -> bool:
  try:
    import torch
  except ImportError:
    return False
  return torch.cuda.is_available()


def measure(sizes, rounds: int, warmup: int, quick: bool,
            only: Sequence[str] | None = None) -> dict[str, Any]:
  """``{impl: {"train_ms": median, "forward_ms": median, "forward_error": max abs, ...} or
  {"error": ...}}`` at ``sizes``."""
  results: dict[str, Any] = {}
  calls: dict[str, Callable[[], Any]] = {}
  oracle = numpy_forward(sizes)
  for name, build in implementations(sizes, quick).items():
    if only and name not in only:
      continue
    try:
      fns = build()
      ys = fns["forward"]()                                              # compile, first run,
      fns["train"]()                                                     # before any update
      calls.update({f"{name}/{kind}": fn for kind, fn in fns.items()})
      ys = ys.cpu().numpy() if hasattr(ys, "cpu") else np.asarray(ys)
      results[name] = {"forward_error": float(np.abs(ys.astype(np.float64) - oracle).max())}
    except Exception as error:                                           # noqa: BLE001
      results[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
  wall, _ = interleaved_times(calls, rounds, warmup)
  for key, times in wall.items():
    name, kind = key.split("/")
    results[name][f"{kind}_ms"] = 1e3 * float(np.median(times))
    results[name][f"{kind}_times_ms"] = [1e3 * t for t in times]
  return results


def device_info() -> dict[str, Any]:
  device = jax.devices()[0]
  info = {"jax_backend": jax.default_backend(), "jax_device": device.device_kind,
          "platform": device.platform, "torch_cuda": torch_cuda()}
  if info["torch_cuda"]:
    import torch
    info["torch"] = torch.__version__
    info["torch_device"] = torch.cuda.get_device_name(0)
    info["cudnn"] = torch.backends.cudnn.version()
  return info


def cell(result: dict[str, Any], key: str) -> Any:
  if result is None:
    return "-"
  if "error" in result:
    return "fail"
  value = result.get(key, "-")
  return f"{value:.1e}" if key == "forward_error" and isinstance(value, float) else value


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds (runs anywhere)")
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--configs", nargs="*", default=None, choices=["per_step", *CONFIGS, *QUICK_CONFIGS],
                      help="names of the configs to run (default: all)")
  parser.add_argument("--impls", nargs="*", default=None, help="names of implementations to run")
  parser.add_argument("--out", default=None, help="results/<out>.json")
  args = parser.parse_args(argv)
  every = {"per_step": QUICK_PER_STEP, **QUICK_CONFIGS} if args.quick else {"per_step": PER_STEP,
                                                                            **CONFIGS}
  configs = {name: every[name] for name in args.configs} if args.configs else every
  rounds = args.rounds or (2 if args.quick else 20)
  warmup = 1 if args.quick else 3
  payload: dict[str, Any] = {"machine": machine_info(), "device": device_info(),
                             "kernel_interpret_mode": jax.default_backend() != "gpu",
                             "rounds": rounds, "configs": {}}
  names = [n for n in implementations((1, 1, 1, 1, 1), args.quick)
           if not args.impls or n in args.impls]
  out = args.out or ("gpu_quick" if args.quick else "gpu")
  for label, sizes in configs.items():
    print(f"# {label} {sizes}", file=sys.stderr, flush=True)
    payload["configs"][label] = {
        "sizes": sizes, "results": measure(sizes, rounds, warmup, args.quick, args.impls),
        "kernel_fits_on_chip": {p: kernels.fits_on_chip(jnp.float32, sizes[3], p)
                                for p in ("highest", "default")}}
    write_json(out, payload)                                             # a cut-off run keeps these

  print(f"device: {payload['device']}")
  for kind, title in (("train_ms", "train step, median ms"), ("forward_ms", "forward only, median ms"),
                      ("forward_error", "forward error: max |y - y_float64|")):
    print(f"\n{title}")
    rows = [[f"{label} {tuple(entry['sizes'])}"] + [cell(entry["results"].get(n), kind) for n in names]
            for label, entry in payload["configs"].items() if label != "per_step"]
    print_table(["config (T,B,I,H,O)"] + names, rows)
  if "per_step" in payload["configs"]:
    entry = payload["configs"]["per_step"]
    steps = entry["sizes"][0]
    print(f"\nper time step at {tuple(entry['sizes'])}, microseconds")
    rows = []
    for kind in ("train_ms", "forward_ms"):
      values = [cell(entry["results"].get(n), kind) for n in names]
      rows.append([kind[:-3]] + [1e3 * v / steps if isinstance(v, float) else v for v in values])
    print_table(["pass"] + names, rows)
  print(f"\nwrote {write_json(out, payload)}")
  return payload


if __name__ == "__main__":
  main()
