"""Truncated BPTT: the chunk gradient is full BPTT restricted to the chunk, the state carries
exactly, epochs learn a stream; unidirectional models of any depth only.

The oracle is :func:`reference`, a unidirectional stack written here (no
library code): the gradient of a chunk is ``jax.grad`` of its loss with the
incoming state a constant (``stop_gradient``).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
from conftest import random_params

T, K, B, I, H, O = 12, 4, 3, 3, 4, 3
UNIDIRECTIONAL = [1, 2]                      # layers; tbptt is unidirectional by nature


def reference(params, h0, xs, targets, weights):
  """``(sum_t weights_t sum_b L_t, final states [L, B, H])`` of a unidirectional stack."""
  x, finals = xs, []
  for l, (cell,) in enumerate(params.layers):
    def step(h, x_t, cell=cell):
      h = jnp.tanh(x_t @ cell.W_xh.T + h @ cell.W_hh.T + cell.b_h)
      return h, h
    h, x = jax.lax.scan(step, h0[l], x)
    finals.append(h)
  log_probs = jax.nn.log_softmax(x @ params.W_hy.T + params.b_y, axis=-1)   # [T, B, O]
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return -jnp.sum(weights[:, None] * picked), jnp.stack(finals)


def chunk_loss(params, h, xs, targets):
  """The chunk's loss with the incoming state ``h`` a constant: truncated BPTT by construction."""
  return reference(params, jax.lax.stop_gradient(h), xs, targets, jnp.ones(xs.shape[0]))


chunk_value_and_grad = jax.jit(jax.value_and_grad(chunk_loss, has_aux=True))
full_grad = jax.jit(jax.grad(lambda params, h0, xs, targets, weights:
                             reference(params, h0, xs, targets, weights)[0]))
tbptt_grad = jax.jit(jaxrnn.tbptt_grad)


def stream(seed, num_steps=T):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(num_steps, B, I))), jnp.asarray(
      rng.integers(0, O, (num_steps, B)))


def max_diff(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def uni_params(seed, num_layers, hidden=H):
  return random_params(seed, (I, hidden, O), num_layers=num_layers)


@pytest.mark.parametrize("num_layers", UNIDIRECTIONAL)
def test_chunk_gradient_is_full_bptt_restricted_to_the_chunk(num_layers):
  params = uni_params(0, num_layers)
  xs, targets = stream(1)
  h = h_ref = jnp.asarray(np.random.default_rng(2).normal(size=(num_layers, B, H)))
  for c in range(T // K):
    chunk = slice(c * K, (c + 1) * K)
    value, grads, h = tbptt_grad(params, h, jaxrnn.Batch(xs[chunk], targets[chunk]))
    (expected, h_ref_next), expected_grads = chunk_value_and_grad(params, h_ref, xs[chunk],
                                                                  targets[chunk])
    diff = max_diff(grads, expected_grads)
    print(f"{num_layers} layers, chunk {c}: max |tbptt - restricted BPTT| = {diff:.3g}")
    assert diff < 1e-10
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    assert max_diff(h, h_ref_next) < 1e-12                       # the carried state is exact
    if c > 0:  # what truncation drops: the chunk's loss through the earlier chunks' steps
      weights = jnp.zeros(T).at[chunk].set(1.0)
      h0 = jnp.asarray(np.random.default_rng(2).normal(size=(num_layers, B, H)))
      full = full_grad(params, h0, xs, targets, weights)
      assert max_diff(full.layers[0][0].W_hh, grads.layers[0][0].W_hh) > 1e-3
      assert max_diff(full.W_hy, grads.W_hy) < 1e-10             # the readout is not recurrent
    h_ref = h_ref_next


@pytest.mark.parametrize("num_layers", UNIDIRECTIONAL)
def test_epoch_carries_the_exact_state(num_layers):
  """With a zero learning rate the chunks reproduce one run over the whole stream."""
  params = uni_params(3, num_layers)
  xs, targets = stream(4)
  h0 = jnp.asarray(np.random.default_rng(5).normal(size=(num_layers, B, H)))
  sgd = optax.sgd(0.0)
  result = jax.jit(functools.partial(jaxrnn.tbptt_epoch, optimizer=sgd, chunk_length=K))(
      params, sgd.init(params), stream=jaxrnn.Batch(xs, targets), h0=h0)
  assert result.losses.shape == (T // K,) and result.h.shape == (num_layers, B, H)
  _, final = reference(params, h0, xs, targets, jnp.ones(T))
  assert max_diff(result.h, final) < 1e-12
  assert max_diff(result.params, params) == 0
  h, running = h0, []                                           # sequence_loss chunk by chunk
  for c in range(T // K):
    chunk = slice(c * K, (c + 1) * K)
    value, h = jaxrnn.sequence_loss(params, jaxrnn.Batch(xs[chunk], targets[chunk]), h)
    expected, _ = reference(params, h0, xs, targets, jnp.zeros(T).at[chunk].set(1.0))
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    running.append(float(value))
  np.testing.assert_allclose(result.losses, running, rtol=1e-12)


@pytest.mark.parametrize("num_layers", UNIDIRECTIONAL)
def test_epochs_learn_a_stream(num_layers):
  """Next-token prediction of ``0 1 0 2 0 1 0 2 ...``: after a 0 the answer depends on the
  token before it, which may lie in the previous chunk, so the carried state matters."""
  tokens = jnp.tile(jnp.array([0, 1, 0, 2]), 3 * T // 4 + 1)[:3 * T + 1]
  batch = jaxrnn.Batch(jax.nn.one_hot(tokens[:-1], I)[:, None], tokens[1:, None])  # B = 1
  params = random_params(6, (I, 8, O), num_layers=num_layers)
  adam = optax.adam(3e-2)
  epoch = jax.jit(functools.partial(jaxrnn.tbptt_epoch, optimizer=adam, chunk_length=K,
                                    model=jaxrnn.ModelSpec(input_dropout=0.1)))
  opt_state, h, key, means = adam.init(params), None, jax.random.key(1), []
  for _ in range(15):
    key, k = jax.random.split(key)
    params, opt_state, h, losses = epoch(params, opt_state, stream=batch, h0=h, key=k)
    means.append(float(losses.mean()))
  assert means[-1] < 0.3 * means[0]
  assert h.shape == (num_layers, 1, 8)


def test_bidirectional_model_raises():
  params = random_params(7, (I, H, O), num_layers=2, bidirectional=True)
  sgd = optax.sgd(0.1)
  xs, targets = stream(8)
  with pytest.raises(ValueError, match="bidirectional"):
    jaxrnn.tbptt_epoch(params, sgd.init(params), sgd, jaxrnn.Batch(xs, targets), K)


def test_tbptt_grad_rejects_a_bidirectional_model():
  params = random_params(7, (I, H, O), num_layers=1, bidirectional=True)
  xs, targets = stream(8, K)
  with pytest.raises(ValueError, match="bidirectional"):
    jaxrnn.tbptt_grad(params, jnp.zeros((2, B, H)), jaxrnn.Batch(xs, targets))


def test_chunk_length_and_stream_checks():
  assert jaxrnn.tbptt.tbptt_chunks(jnp.zeros((T, B, I)), K).shape == (T // K, K, B, I)
  with pytest.raises(ValueError, match="chunk_length must divide T=12"):
    jaxrnn.tbptt.tbptt_chunks(jnp.zeros((T, B, I)), 5)
  params = uni_params(9, 1)
  sgd = optax.sgd(0.1)
  xs, targets = stream(9)
  epoch = lambda stream, chunk_length=K: jaxrnn.tbptt_epoch(params, sgd.init(params), sgd,
                                                            stream, chunk_length)
  for bad in (5, 0, -4, 2.0, True):
    with pytest.raises(ValueError, match="chunk_length"):
      epoch(jaxrnn.Batch(xs, targets), bad)
  with pytest.raises(ValueError, match="lengths"):
    epoch(jaxrnn.Batch(xs, targets, lengths=jnp.full((B,), T)))
  with pytest.raises(ValueError, match="target_mask"):
    epoch(jaxrnn.Batch(xs, targets, target_mask=jnp.ones((T, B))))
  with pytest.raises(TypeError, match="stream"):
    epoch((xs, targets))
