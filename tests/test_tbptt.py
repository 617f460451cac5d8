"""Truncated BPTT: chunks carry the exact state, and the gradient is full BPTT restricted to the chunk."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
from jaxrnn.stacked import LayerParams

T, K, B, I, H, O = 12, 4, 3, 3, 4, 3


def random_params(seed, num_layers=1, num_dirs=1, hidden=H):
  """A :class:`jaxrnn.StackedParams` with N(0, 0.5^2) weights and biases (NumPy: no compiles)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(0.5 * rng.normal(size=shape))
  layers = tuple(tuple(LayerParams(normal(hidden, I if l == 0 else num_dirs * hidden),
                                   normal(hidden, hidden), normal(hidden))
                       for _ in range(num_dirs)) for l in range(num_layers))
  return jaxrnn.StackedParams(layers, normal(O, num_dirs * hidden), normal(O))


def stream(seed):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(T, B, I))), jnp.asarray(rng.integers(0, O, (T, B)))


@functools.partial(jax.jit, static_argnums=3)
def per_step_grads(params, xs, targets, chunk):
  """``dL^{(c)}/dtheta_t`` for every step ``t``: full BPTT of chunk ``c``'s loss over the whole
  stream, with step ``t`` using its own copy ``theta_t = theta + eps_t`` of the layer params.

  Returns the per-step layer gradients (leading axis ``[T]``) and the readout gradients.
  """
  layer = params.layers[0][0]

  def loss(eps, W_hy, b_y):
    h, total = jnp.zeros((B, H)), 0.0
    for t in range(T):
      p = jax.tree.map(lambda a, e: a + e[t], layer, eps)
      h = jnp.tanh(xs[t] @ p.W_xh.T + h @ p.W_hh.T + p.b_h)
      if chunk * K <= t < (chunk + 1) * K:
        log_probs = jax.nn.log_softmax(h @ W_hy.T + b_y)
        total -= jnp.sum(jnp.take_along_axis(log_probs, targets[t][:, None], 1))
    return total

  eps = jax.tree.map(lambda a: jnp.zeros((T,) + a.shape), layer)
  return jax.grad(loss, argnums=(0, 1, 2))(eps, params.W_hy, params.b_y)


def test_chunk_gradient_is_full_bptt_restricted_to_the_chunk():
  params = random_params(0)
  xs, targets = stream(1)
  grad = jax.jit(functools.partial(jaxrnn.tbptt_grad, loss="cross_entropy"))
  h = jnp.zeros((1, B, H))
  for c in range(T // K):
    chunk = slice(c * K, (c + 1) * K)
    _, grads, h = grad(params, h, xs[chunk], targets[chunk])
    per_step, dW_hy, db_y = per_step_grads(params, xs, targets, c)
    restricted = jax.tree.map(lambda g: g[chunk].sum(0), per_step)
    full = jax.tree.map(lambda g: g.sum(0), per_step)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves((grads.layers[0][0], grads.W_hy, grads.b_y)),
                   jax.tree.leaves((restricted, dW_hy, db_y))))
    print(f"chunk {c}: max |tbptt - restricted full BPTT| = {diff:.3g}")
    assert diff <= 1e-10
    if c > 0:  # what truncation drops: the chunk's loss through the earlier steps
      assert float(jnp.max(jnp.abs(full.W_hh - restricted.W_hh))) > 1e-3


def test_epoch_carries_the_exact_state():
  """With a zero learning rate the chunks reproduce one full unroll of the stream."""
  params = random_params(2, num_layers=2)
  xs, targets = stream(3)
  h0 = jnp.asarray(np.random.default_rng(4).normal(size=(2, B, H)))
  sgd = optax.sgd(0.0)
  result = jax.jit(functools.partial(jaxrnn.tbptt_epoch, optimizer=sgd, chunk_length=K))(
      params, sgd.init(params), xs=xs, targets=targets, h0=h0)
  _, ys, final = jaxrnn.unroll_stacked(params, xs, h0)
  np.testing.assert_allclose(result.h, final, atol=1e-12)
  chunk_losses = jaxrnn.step_losses(ys, targets, "cross_entropy", "identity")
  np.testing.assert_allclose(result.losses, chunk_losses.reshape(T // K, K * B).sum(1),
                             rtol=1e-12)


def test_epochs_learn_a_stream():
  """Next-token prediction of a periodic stream ``0 1 0 2 0 1 0 2 ...``: after a 0 the
  answer depends on the token before it, which may lie in the previous chunk."""
  tokens = jnp.tile(jnp.array([0, 1, 0, 2]), 3 * T // 4 + 1)[:3 * T + 1]
  xs = jax.nn.one_hot(tokens[:-1], I)[:, None]                          # [3T, 1, I]
  targets = tokens[1:, None]                                            # [3T, 1]
  params = random_params(5, hidden=8)
  adam = optax.adam(3e-2)
  epoch = jax.jit(functools.partial(jaxrnn.tbptt_epoch, optimizer=adam, chunk_length=K,
                                    input_dropout=0.1))
  opt_state, h, key = adam.init(params), None, jax.random.key(1)
  first = None
  for _ in range(15):
    key, k = jax.random.split(key)
    params, opt_state, h, losses = epoch(params, opt_state, xs=xs, targets=targets, h0=h, key=k)
    first = losses.mean() if first is None else first
  assert losses.mean() < 0.3 * first


def test_chunking_checks():
  assert jaxrnn.tbptt_chunks(jnp.zeros((T, B, I)), K).shape == (T // K, K, B, I)
  with pytest.raises(ValueError, match="dividing T=12"):
    jaxrnn.tbptt_chunks(jnp.zeros((T, B, I)), 5)
  params = random_params(0, num_dirs=2)
  sgd = optax.sgd(0.1)
  xs, targets = stream(0)
  with pytest.raises(ValueError, match="bidirectional"):
    jaxrnn.tbptt_epoch(params, sgd.init(params), sgd, xs, targets, K)
