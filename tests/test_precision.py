"""Mixed precision: float32 params, layers computed in bfloat16, loss and gradients in float32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.stacked import LayerParams

T, B, I, H, O = 16, 8, 4, 16, 3
LENGTHS = jnp.array([16, 9, 12, 3, 16, 1, 7, 14])
LOSS_BOUND = 1e-3       # |L_bf16 - L_f32| / |L_f32|
GRAD_BOUND = 5e-2       # ||g_bf16 - g_f32|| / ||g_f32||, per parameter array


def float32_problem(seed):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[-1]), jnp.float32)
  layers = tuple(tuple(LayerParams(normal(H, I if l == 0 else 2 * H), normal(H, H),
                                   normal(H) * 0.1) for _ in range(2)) for l in range(2))
  params = jaxrnn.StackedParams(layers, normal(O, 2 * H), normal(O) * 0.1)
  xs = jnp.asarray(rng.normal(size=(T, B, I)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, O, (T, B)))
  return params, xs, targets


@functools.partial(jax.jit, static_argnames="compute_dtype")
def loss_and_grad(params, xs, targets, lengths, compute_dtype):
  def loss(params):
    return jaxrnn.stacked_loss(params, xs, targets, lengths=lengths, reduction="mean",
                               compute_dtype=compute_dtype)[0]
  return jax.value_and_grad(loss)(params)


def test_bfloat16_compute_is_close_to_float32():
  params, xs, targets = float32_problem(0)
  loss32, grads32 = loss_and_grad(params, xs, targets, LENGTHS, None)
  loss16, grads16 = loss_and_grad(params, xs, targets, LENGTHS, jnp.bfloat16)
  assert loss16.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  loss_diff = float(abs(loss16 - loss32) / abs(loss32))
  grad_diff = max(float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
                  for a, b in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)))
  print(f"relative loss difference {loss_diff:.3g}, "
        f"largest relative gradient difference {grad_diff:.3g}")
  assert 0 < loss_diff <= LOSS_BOUND
  assert grad_diff <= GRAD_BOUND


def test_outputs_stay_in_param_dtype():
  params, xs, _ = float32_problem(1)
  forward = jax.jit(jaxrnn.unroll_stacked, static_argnames="compute_dtype")
  default = forward(params, xs, lengths=LENGTHS)
  explicit = forward(params, xs, lengths=LENGTHS, compute_dtype=jnp.float32)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), default, explicit))
  mixed = forward(params, xs, lengths=LENGTHS, compute_dtype=jnp.bfloat16)
  assert all(a.dtype == jnp.float32 for a in mixed)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(mixed, default))
  assert 0 < diff < 5e-2
  with pytest.raises(TypeError, match="compute_dtype"):
    jaxrnn.unroll_stacked(params, xs, compute_dtype=jnp.int32)
