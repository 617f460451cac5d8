"""The fast paths give autodiff's numbers: fused hand-BPTT gradient, chunk checkpointing,
inference, and the batch split over host devices.

float64 (the suite's default) to 1e-10, float32 to 1e-5 relative.
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
from jaxrnn.memory import infer
from jaxrnn.parallel import make_parallel_train_step
from jaxrnn.recurrence import backward_hidden, fused_hidden, scan_hidden

T, B, I, H, O = 13, 4, 3, 7, 5
LENGTHS = np.array([13, 6, 0, 1])


def problem(dtype, seed=0, scale=0.6):
  rng = np.random.default_rng(seed)
  params = jaxrnn.init_params(jax.random.key(seed), I, H, O, scale=scale, dtype=dtype)
  params = params._replace(b_h=jnp.asarray(rng.standard_normal(H) * 0.1, dtype),
                           b_y=jnp.asarray(rng.standard_normal(O) * 0.1, dtype))
  xs = jnp.asarray(rng.standard_normal((T, B, I)), dtype)
  targets = jnp.asarray(rng.integers(0, O, (T, B)))
  h0 = jnp.asarray(rng.standard_normal((B, H)) * 0.5, dtype)
  return params, xs, targets, h0


def assert_close(actual, expected, rtol):
  """``max |a - e| <= rtol * max |e|`` leaf by leaf (relative to each leaf's scale)."""
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(a), np.asarray(e)
    assert a.shape == e.shape and a.dtype == e.dtype
    assert np.max(np.abs(a - e)) <= rtol * max(np.max(np.abs(e)), 1e-30)


def unroll_loss(params, xs, h0, targets, lengths, activation, reverse, backward):
  """A loss on ``unroll``'s outputs, so gradients flow through ``reverse`` and ``h0``."""
  hs, ys = jaxrnn.unroll(params, xs, h0, lengths, activation, "softmax", reverse, backward)
  picked = jnp.take_along_axis(ys, targets[..., None], axis=-1)
  return jnp.sum(jnp.log(picked + 1.0)) + jnp.sum(jnp.sin(hs))


FLOAT64_CASES = [(jnp.float64, 1e-10, activation, lengths, reverse)
                 for activation in ("tanh", "relu") for lengths in (None, LENGTHS)
                 for reverse in (False, True)]
FLOAT32_CASES = [(jnp.float32, 1e-5, activation, LENGTHS, reverse)
                 for activation, reverse in (("tanh", False), ("relu", True))]


@pytest.mark.parametrize("dtype,rtol,activation,lengths,reverse", FLOAT64_CASES + FLOAT32_CASES)
def test_fused_gradient_equals_autodiff(dtype, rtol, activation, lengths, reverse):
  params, xs, targets, h0 = problem(dtype)
  grad = lambda backward: jax.grad(unroll_loss, argnums=(0, 1, 2))(
      params, xs, h0, targets, lengths, activation, reverse, backward)
  fused, autodiff = grad("fused"), grad("autodiff")
  assert_close(fused, autodiff, rtol)
  assert np.max(np.abs(np.asarray(fused[0].W_hh))) > 1e-3   # a real, non-zero gradient


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-10), (jnp.float32, 1e-5)])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_sequence_loss_gradient_fused_equals_autodiff(dtype, rtol, lengths):
  params, xs, targets, h0 = problem(dtype, seed=1)
  value_and_grad = lambda backward: jax.value_and_grad(jaxrnn.sequence_loss)(
      params, xs, targets, lengths=lengths, h0=h0, reduction="mean", backward=backward)
  (loss_f, grads_f), (loss_a, grads_a) = value_and_grad("fused"), value_and_grad("autodiff")
  assert_close(loss_f, loss_a, rtol)
  assert_close(grads_f, grads_a, rtol)


@pytest.mark.parametrize("scan_unroll", [2, 5, 16])
def test_scan_unroll_changes_nothing(scan_unroll):
  params, xs, targets, h0 = problem(jnp.float64, seed=2)
  grad = lambda unroll: jax.grad(jaxrnn.sequence_loss)(params, xs, targets, lengths=LENGTHS,
                                                       h0=h0, scan_unroll=unroll)
  assert_close(grad(scan_unroll), grad(1), 1e-12)


def test_fused_vjp_is_the_hand_recursion():
  """The custom VJP returns ``(delta, sum_t delta_t h_{t-1}^T, W_hh^T delta_1)`` of the recursion."""
  params, xs, _, h0 = problem(jnp.float64, seed=3)
  pre = xs @ params.W_xh.T + params.b_h
  g = jnp.asarray(np.random.default_rng(3).standard_normal((T, B, H)))
  hs, vjp = jax.vjp(lambda p, w, h: fused_hidden(p, w, h, None, "tanh"), pre, params.W_hh, h0)
  dpre, dW_hh, dh0 = vjp(g)
  delta, dh0_hand = backward_hidden(params.W_hh, hs, h0, g, None, "tanh")
  previous = jnp.concatenate([h0[None], hs[:-1]])
  assert_close(hs, scan_hidden(pre, params.W_hh, h0, None, "tanh"), 1e-14)
  assert_close(dpre, delta, 1e-14)
  assert_close(dh0, dh0_hand, 1e-14)
  assert_close(dW_hh, jnp.einsum("tbh,tbk->hk", delta, previous), 1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 20])
@pytest.mark.parametrize("backward", ["fused", "autodiff"])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_checkpointed_loss_equals_plain(chunk, backward, lengths):
  params, xs, targets, h0 = problem(jnp.float64, seed=4)
  target_mask = jnp.asarray(np.random.default_rng(4).integers(0, 2, (T, B)))
  loss = functools.partial(jaxrnn.sequence_loss, lengths=lengths, h0=h0, target_mask=target_mask,
                           reduction="mean", backward=backward)
  plain = jax.value_and_grad(loss)(params, xs, targets)
  chunked = jax.value_and_grad(functools.partial(loss, checkpoint_every=chunk))(params, xs, targets)
  assert_close(chunked, plain, 1e-10)


def test_checkpointed_squared_error_float32():
  params, xs, _, h0 = problem(jnp.float32, seed=5)
  targets = jnp.asarray(np.random.default_rng(5).standard_normal((T, B, O)), jnp.float32)
  loss = functools.partial(jaxrnn.sequence_loss, loss="squared_error", output_activation="tanh",
                           h0=h0)
  plain = jax.value_and_grad(loss)(params, xs, targets)
  chunked = jax.value_and_grad(functools.partial(loss, checkpoint_every=4))(params, xs, targets)
  assert_close(chunked, plain, 1e-5)


def test_checkpointed_loss_rejects_bad_chunk():
  params, xs, targets, _ = problem(jnp.float64)
  with pytest.raises(ValueError, match="checkpoint_every"):
    jaxrnn.sequence_loss(params, xs, targets, checkpoint_every=0)


def test_checkpointing_lowers_compiled_memory():
  """XLA's compiled temp memory of a gradient step: checkpointed well below storing every ``h_t``."""
  num_steps, batch, hidden = 1024, 8, 64
  params = jaxrnn.init_params(jax.random.key(0), 4, hidden, 4, dtype=jnp.float32)
  xs = jnp.zeros((num_steps, batch, 4), jnp.float32)
  targets = jnp.zeros((num_steps, batch), jnp.int32)

  def temp_bytes(**kwargs):
    step = jax.jit(jax.grad(functools.partial(jaxrnn.sequence_loss, **kwargs)))
    return step.lower(params, xs, targets).compile().memory_analysis().temp_size_in_bytes
  hs_bytes = num_steps * batch * hidden * 4
  plain, chunked = temp_bytes(), temp_bytes(checkpoint_every=32)
  assert plain >= hs_bytes
  assert chunked < hs_bytes / 4


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
@pytest.mark.parametrize("output_activation", ["identity", "softmax"])
def test_infer_equals_unroll(dtype, rtol, lengths, output_activation):
  params, xs, _, h0 = problem(dtype, seed=6)
  h_T, ys = jax.jit(infer, static_argnames=("activation", "output_activation"))(
      params, xs, h0, lengths, output_activation=output_activation)
  hs, ys_unroll = jaxrnn.unroll(params, xs, h0, lengths, output_activation=output_activation)
  assert_close(h_T, hs[-1], rtol)
  assert_close(ys, ys_unroll, rtol)
  if lengths is not None:
    assert_close(h_T[2], h0[2], 0)                     # a length-0 sequence keeps h0


def test_infer_rejects_unknown_output_activation():
  params, xs, _, _ = problem(jnp.float64)
  with pytest.raises(ValueError, match="output_activation"):
    infer(params, xs, output_activation="relu")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_parallel_train_step_equals_plain_on_one_device(reduction):
  params, xs, targets, _ = problem(jnp.float64, seed=7)
  batch = jaxrnn.Batch(xs, targets, jnp.asarray(LENGTHS),
                       jnp.asarray(np.random.default_rng(7).integers(0, 2, (T, B)), jnp.float64))
  optimizer = optax.adam(1e-2)
  spec = jaxrnn.LossSpec(reduction=reduction)
  opt_state = optimizer.init(params)
  plain = jaxrnn.make_train_step(optimizer, spec, donate=False)(params, opt_state, batch)
  split = make_parallel_train_step(optimizer, spec, donate=False)(params, opt_state, batch)
  assert_close(split, plain, 1e-12)


TWO_DEVICES = """
import jax, jax.numpy as jnp, numpy as np, optax
jax.config.update("jax_enable_x64", True)
import jaxrnn
from jaxrnn.parallel import make_parallel_train_step
assert len(jax.devices()) == 2
rng = np.random.default_rng(0)
params = jaxrnn.init_params(jax.random.key(0), 3, 5, 4, scale=0.5)
batch = jaxrnn.Batch(jnp.asarray(rng.standard_normal((7, 6, 3))),
                     jnp.asarray(rng.integers(0, 4, (7, 6))), jnp.array([7, 2, 0, 5, 7, 1]))
optimizer, spec = optax.adam(1e-2), jaxrnn.LossSpec(reduction="mean")
opt_state = optimizer.init(params)
plain = jaxrnn.make_train_step(optimizer, spec, donate=False)(params, opt_state, batch)
split = make_parallel_train_step(optimizer, spec, donate=False)(params, opt_state, batch)
print(max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(split))))
try:
  make_parallel_train_step(optimizer, spec)(params, opt_state, batch._replace(
      xs=batch.xs[:, :5], targets=batch.targets[:, :5], lengths=batch.lengths[:5]))
except ValueError as error:
  print("divisible" in str(error))
"""


def test_parallel_train_step_splits_over_two_host_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", TWO_DEVICES], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
  difference, rejected = result.stdout.split()
  assert float(difference) < 1e-12
  assert rejected == "True"
