"""Benchmark 3: forward-only throughput and per-token latency of step-by-step generation, vs torch.

Run: ``python benchmarks/inference.py``, ``--quick`` for a smoke run. Writes
``benchmarks/results/inference.json``.

* Throughput: logits ``y_t = W_hy h_t + b_y`` of a whole batch (the "medium"
  sizes), no gradient. ``jaxrnn_unroll`` is :func:`jaxrnn.unroll` (batched
  input projection, ``hs`` kept), ``jaxrnn_infer`` is
  :func:`jaxrnn.infer` (one step at a time, nothing kept), ``torch`` is
  ``nn.RNN`` + ``nn.Linear`` under ``torch.inference_mode()``.
* Generation: greedy decoding of one sequence (the "charlm" sizes, ``B = 1``),
  ``x_{t+1} = onehot(argmax y_t)``. ``jaxrnn_loop`` calls a jitted
  :func:`jaxrnn.rnn_cell` step from Python per token, ``jaxrnn_scan`` compiles
  the whole generation into one ``lax.scan``, ``torch_loop`` calls ``nn.RNN``
  on one step per token.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from common import interleaved_times, machine_info, print_table, write_json  # noqa: I001
from train_step import Weights, rnn_params, weights_of

THROUGHPUT_SIZES = (200, 64, 64, 256, 64)    # (T, B, I, H, O)
GENERATION_SIZES = (65, 512, 65)             # (I = O, H, O)
QUICK_THROUGHPUT_SIZES = (12, 4, 5, 16, 5)
QUICK_GENERATION_SIZES = (5, 16, 5)


def numpy_params(inputs: int, hidden: int, outputs: int) -> Weights:
  """Glorot float32 weights (one layer) as NumPy arrays, shared by every implementation."""
  return weights_of(jaxrnn.init_params(jax.random.key(0), inputs, hidden, outputs, init="glorot",
                                       dtype=jnp.float32))


def torch_modules(params: Weights):
  """``(nn.RNN, nn.Linear)`` holding ``params``, on ``torch.set_num_threads(2)``."""
  import torch
  torch.set_num_threads(2)
  hidden, inputs = params.W_xh.shape
  rnn = torch.nn.RNN(inputs, hidden, nonlinearity="tanh")
  out = torch.nn.Linear(hidden, params.W_hy.shape[0])
  with torch.no_grad():
    rnn.weight_ih_l0.copy_(torch.from_numpy(params.W_xh))
    rnn.weight_hh_l0.copy_(torch.from_numpy(params.W_hh))
    rnn.bias_ih_l0.copy_(torch.from_numpy(params.b_h))
    rnn.bias_hh_l0.zero_()
    out.weight.copy_(torch.from_numpy(params.W_hy))
    out.bias.copy_(torch.from_numpy(params.b_y))
  return rnn, out


def throughput_calls(params: Weights, xs: np.ndarray) -> dict[str, Callable[[], Any]]:
  """Blocking forward passes over ``xs [T, B, I]`` that each return the logits ``[T, B, O]``."""
  import torch
  jparams, jxs = rnn_params(params), jnp.asarray(xs)
  unroll = jax.jit(lambda p, x: jaxrnn.unroll(p, x).ys)
  stream = jax.jit(lambda p, x: jaxrnn.infer(p, x)[1])
  rnn, out = torch_modules(params)
  txs = torch.from_numpy(xs)

  def torch_forward():
    with torch.inference_mode():
      return out(rnn(txs)[0]).numpy()
  return {"jaxrnn_unroll": lambda: np.asarray(unroll(jparams, jxs)),
          "jaxrnn_infer": lambda: np.asarray(stream(jparams, jxs)),
          "torch": torch_forward}


def generation_calls(params: Weights, num_tokens: int) -> dict[str, Callable[[], Any]]:
  """Greedy generation of ``num_tokens`` tokens from token 0; each call returns the token ids."""
  import torch
  inputs = params.W_xh.shape[1]
  jparams = rnn_params(params)
  h0 = jnp.zeros((1, 1, params.W_hh.shape[0]), jnp.float32)                      # [L, 1, H]
  x0 = jax.nn.one_hot(jnp.zeros(1, jnp.int32), inputs, dtype=jnp.float32)       # [1, I]

  def token_step(p, h, x):
    h, y = jaxrnn.rnn_cell(p, h, x)                                            # [L, 1, H], [1, O]
    token = jnp.argmax(y, axis=-1)
    return h, jax.nn.one_hot(token, inputs, dtype=x.dtype), token

  step = jax.jit(token_step)

  def jax_loop():
    h, x, tokens = h0, x0, []
    for _ in range(num_tokens):
      h, x, token = step(jparams, h, x)
      tokens.append(token)
    return np.concatenate(jax.device_get(tokens))

  @jax.jit
  def scan_generate(p):
    def body(carry, _):
      h, x, token = token_step(p, *carry)
      return (h, x), token[0]
    return jax.lax.scan(body, (h0, x0), length=num_tokens)[1]

  rnn, out = torch_modules(params)

  def torch_loop():
    with torch.inference_mode():
      h = torch.zeros(1, 1, params.W_hh.shape[0])
      x = torch.zeros(1, 1, inputs)
      x[0, 0, 0] = 1
      tokens = []
      for _ in range(num_tokens):
        hs, h = rnn(x, h)
        token = int(out(hs[0]).argmax(-1))
        x = torch.nn.functional.one_hot(torch.tensor([[token]]), inputs).float()
        tokens.append(token)
      return np.array(tokens)
  return {"jaxrnn_loop": jax_loop, "jaxrnn_scan": lambda: np.asarray(scan_generate(jparams)),
          "torch_loop": torch_loop}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--tokens", type=int, default=200, help="tokens per generation")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  quick = args.quick
  sizes = QUICK_THROUGHPUT_SIZES if quick else THROUGHPUT_SIZES
  gen_sizes = QUICK_GENERATION_SIZES if quick else GENERATION_SIZES
  rounds, tokens = (3, 10) if quick else (args.rounds, args.tokens)
  T, B, I, H, O = sizes
  params = numpy_params(I, H, O)
  xs = np.random.default_rng(0).standard_normal((T, B, I), dtype=np.float32)
  forward = throughput_calls(params, xs)
  logits = {name: call() for name, call in forward.items()}
  agreement = max(float(np.max(np.abs(v - logits["torch"]))) for v in logits.values())
  forward_times, _ = interleaved_times(forward, rounds, warmup=2)
  generate = generation_calls(numpy_params(*gen_sizes), tokens)
  sequences = {name: call() for name, call in generate.items()}
  same_tokens = all(np.array_equal(v, sequences["torch_loop"]) for v in sequences.values())
  generate_times, _ = interleaved_times(generate, rounds, warmup=2)

  results: dict[str, Any] = {"throughput": {}, "generation": {}}
  for name, times in forward_times.items():
    median = float(np.median(times))
    results["throughput"][name] = {"ms": 1e3 * median, "sequences_per_s": B / median,
                                   "tokens_per_s": T * B / median}
  for name, times in generate_times.items():
    median = float(np.median(times))
    results["generation"][name] = {"ms": 1e3 * median, "us_per_token": 1e6 * median / tokens}
  print(f"\nforward-only, (T, B, I, H, O) = {sizes}; max |logits - torch's| = {agreement:.2e}")
  print_table(["impl", "ms/batch", "sequences/s", "x torch"],
              [(name, r["ms"], r["sequences_per_s"],
                r["sequences_per_s"] / results["throughput"]["torch"]["sequences_per_s"])
               for name, r in results["throughput"].items()])
  print(f"\ngreedy generation of {tokens} tokens, (I, H, O) = {gen_sizes}, B = 1; "
        f"same tokens as torch: {same_tokens}")
  print_table(["impl", "us/token", "x torch"],
              [(name, r["us_per_token"],
                results["generation"]["torch_loop"]["us_per_token"] / r["us_per_token"])
               for name, r in results["generation"].items()])
  payload = {"machine": machine_info(), "throughput_sizes": dict(zip("TBIHO", sizes)),
             "generation_sizes": dict(zip("IHO", gen_sizes)), "tokens": tokens,
             "rounds": rounds, "max_abs_logit_diff_vs_torch": agreement,
             "same_tokens_as_torch": same_tokens, **results}
  print(f"\nwrote {write_json('inference_quick' if quick else 'inference', payload)}")
  return payload


if __name__ == "__main__":
  main()
