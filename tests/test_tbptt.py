"""Truncated BPTT: the chunk gradient is full BPTT restricted to the chunk, the state carries
exactly, each chunk draws its own dropout masks, epochs learn a stream; unidirectional models
of any depth only.

The oracle is the NumPy reference (tests/reference.py): the gradient of a chunk is
:func:`reference.bptt` of the chunk alone, started from the carried state (a constant).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
import reference
from conftest import random_params

T, K, B, I, H, O = 12, 4, 3, 3, 4, 3
UNIDIRECTIONAL = [1, 2]                      # layers; tbptt is unidirectional by nature


def capture_gradients():
  """An optax transformation that leaves the params alone and keeps the last gradient as its
  state: ``step(params, grads, h, chunk)`` returns the chunk's exact gradient."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def stream(seed, num_steps=T):
  rng = np.random.default_rng(seed)
  return jaxrnn.Batch(jnp.asarray(rng.normal(size=(num_steps, B, I))),
                      jnp.asarray(rng.integers(0, O, (num_steps, B))))


def uni_params(seed, num_layers, hidden=H):
  return random_params(seed, (I, hidden, O), num_layers=num_layers)


def chunk_mask(c):
  """``target_mask [T, B]`` selecting chunk ``c``'s steps."""
  return np.repeat((np.arange(T) // K == c)[:, None], B, axis=1).astype(float)


@functools.cache
def jitted_epoch(optimizer, model=jaxrnn.ModelSpec()):
  step = jaxrnn.make_tbptt_step(optimizer, model=model)
  return jax.jit(functools.partial(jaxrnn.tbptt_epoch, step, chunk_length=K))


@pytest.mark.parametrize("num_layers", UNIDIRECTIONAL)
def test_chunk_gradient_is_full_bptt_restricted_to_the_chunk(num_layers):
  params = uni_params(0, num_layers)
  data = stream(1)
  optimizer = capture_gradients()
  step = jax.jit(jaxrnn.make_tbptt_step(optimizer))
  h0 = jnp.asarray(np.random.default_rng(2).normal(size=(num_layers, B, H)))
  h = h0
  for c in range(T // K):
    chunk = jax.tree.map(lambda a: a[c * K:(c + 1) * K], data)
    same_params, grads, h_next, value = step(params, optimizer.init(params), h, chunk)
    expected, h_ref = reference.loss(params, chunk.xs, chunk.targets, h0=h)
    expected_grads, _ = reference.bptt(params, chunk.xs, chunk.targets, h0=h)
    chex.assert_trees_all_equal(same_params, params)
    chex.assert_trees_all_close(grads, expected_grads, atol=1e-10, rtol=0)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    _, whole = reference.loss(params, data.xs[:(c + 1) * K], data.targets[:(c + 1) * K], h0=h0)
    chex.assert_trees_all_close(h_next, whole, atol=1e-12, rtol=0)  # the carried state is exact
    chex.assert_trees_all_close(h_next, h_ref, atol=1e-12, rtol=0)
    if c > 0:  # what truncation drops: the chunk's loss through the earlier chunks' steps
      full, _ = reference.bptt(params, data.xs, data.targets, h0=h0, target_mask=chunk_mask(c))
      assert np.max(np.abs(full[0][0][0][1] - np.asarray(grads.layers[0][0].W_hh))) > 1e-3
      chex.assert_trees_all_close(grads.W_hy, full[1], atol=1e-10, rtol=0)  # not recurrent
    h = h_next


@pytest.mark.parametrize("num_layers", UNIDIRECTIONAL)
def test_epoch_carries_the_exact_state(num_layers):
  """With a zero learning rate the chunks reproduce one run over the whole stream."""
  params = uni_params(3, num_layers)
  data = stream(4)
  h0 = jnp.asarray(np.random.default_rng(5).normal(size=(num_layers, B, H)))
  sgd = optax.sgd(0.0)
  result = jitted_epoch(sgd)(params, sgd.init(params), data, h0=h0)
  assert isinstance(result, jaxrnn.TBPTTResult)
  chex.assert_shape(result.losses, (T // K,))
  chex.assert_shape(result.h, (num_layers, B, H))
  _, final = reference.loss(params, data.xs, data.targets, h0=h0)
  chex.assert_trees_all_close(result.h, final, atol=1e-12, rtol=0)
  chex.assert_trees_all_equal(result.params, params)
  # each chunk's loss is the whole stream's loss restricted to the chunk's steps
  expected = [reference.loss(params, data.xs, data.targets, h0=h0, target_mask=chunk_mask(c))[0]
              for c in range(T // K)]
  np.testing.assert_allclose(result.losses, expected, rtol=1e-12)


@pytest.mark.parametrize("num_layers", [2])           # 2: dropout between layers too
def test_epoch_is_its_steps_in_a_row(num_layers):
  """``tbptt_epoch`` = ``step`` chunk after chunk, carrying ``(params, opt_state, h)``, chunk
  ``c`` with the documented dropout key ``fold_in(key, c)``."""
  params = uni_params(6, num_layers)
  data = stream(7)
  adam = optax.adam(1e-2)
  model = jaxrnn.ModelSpec(dropout=0.3, input_dropout=0.3, state_dropout=0.3)
  step = jax.jit(jaxrnn.make_tbptt_step(adam, model=model))
  key = jax.random.key(8)
  result = jitted_epoch(adam, model)(params, adam.init(params), data, key=key)
  p, state, h, losses = params, adam.init(params), jnp.zeros((num_layers, B, H)), []
  for c in range(T // K):
    chunk = jax.tree.map(lambda a: a[c * K:(c + 1) * K], data)
    p, state, h, value = step(p, state, h, chunk, jax.random.fold_in(key, c))
    losses.append(value)
  chex.assert_trees_all_close((result.params, result.opt_state, result.h), (p, state, h),
                              atol=1e-12, rtol=0)
  np.testing.assert_allclose(result.losses, losses, rtol=1e-12)


def test_each_chunk_draws_its_own_dropout_masks():
  """A stream of identical chunks, ``W_hh = 0`` (no memory) and a zero learning rate: every
  chunk's loss is a function of its dropout masks alone, so equal losses would mean equal
  masks. Without a key every chunk has the same loss."""
  params = uni_params(9, 2)
  params = params._replace(layers=tuple((cell._replace(W_hh=0 * cell.W_hh),)
                                        for (cell,) in params.layers))
  one = stream(10, K)
  data = jax.tree.map(lambda a: jnp.concatenate([a] * (T // K)), one)
  sgd = optax.sgd(0.0)
  model = jaxrnn.ModelSpec(dropout=0.5, input_dropout=0.5)
  epoch = jitted_epoch(sgd, model)
  plain = epoch(params, sgd.init(params), data).losses
  np.testing.assert_allclose(plain, plain[0], rtol=1e-14)        # the chunks are alike
  for seed in (0, 1):
    losses = np.asarray(epoch(params, sgd.init(params), data, key=jax.random.key(seed)).losses)
    assert len(set(losses.tolist())) == T // K, losses          # but their masks are not
    assert not np.any(np.isclose(losses, plain[0], rtol=1e-12)), losses


@pytest.mark.parametrize("num_layers", UNIDIRECTIONAL)
def test_epochs_learn_a_stream(num_layers):
  """Next-token prediction of ``0 1 0 2 0 1 0 2 ...``: after a 0 the answer depends on the
  token before it, which may lie in the previous chunk, so the carried state matters."""
  tokens = jnp.tile(jnp.array([0, 1, 0, 2]), 3 * T // 4 + 1)[:3 * T + 1]
  batch = jaxrnn.Batch(jax.nn.one_hot(tokens[:-1], I, dtype=jnp.float64)[:, None],
                       tokens[1:, None])                                   # B = 1
  params = random_params(6, (I, 8, O), num_layers=num_layers)
  adam = optax.adam(3e-2)
  epoch = jitted_epoch(adam, jaxrnn.ModelSpec(input_dropout=0.1))
  opt_state, h, key, means = adam.init(params), None, jax.random.key(1), []
  for _ in range(15):
    key, k = jax.random.split(key)
    params, opt_state, h, losses = epoch(params, opt_state, batch, h0=h, key=k)
    means.append(float(losses.mean()))
  assert means[-1] < 0.3 * means[0]
  chex.assert_shape(h, (num_layers, 1, 8))


def test_a_bidirectional_model_raises():
  params = random_params(7, (I, H, O), num_layers=2, bidirectional=True)
  sgd = optax.sgd(0.1)
  step = jaxrnn.make_tbptt_step(sgd)
  with pytest.raises(ValueError, match="bidirectional"):
    jaxrnn.tbptt_epoch(step, params, sgd.init(params), stream(8), K)
  one = random_params(7, (I, H, O), num_layers=1, bidirectional=True)
  with pytest.raises(ValueError, match="bidirectional"):
    step(one, sgd.init(one), jnp.zeros((2, B, H)), stream(8, K))


def test_chunk_length_and_stream_checks():
  assert jaxrnn.tbptt.tbptt_chunks(jnp.zeros((T, B, I)), K).shape == (T // K, K, B, I)
  with pytest.raises(ValueError, match="chunk_length must divide T=12"):
    jaxrnn.tbptt.tbptt_chunks(jnp.zeros((T, B, I)), 5)
  params = uni_params(9, 1)
  sgd = optax.sgd(0.1)
  step = jaxrnn.make_tbptt_step(sgd)
  data = stream(9)
  epoch = lambda stream, chunk_length=K, **kwargs: jaxrnn.tbptt_epoch(
      step, params, sgd.init(params), stream, chunk_length, **kwargs)
  for bad in (5, 0, -4, 2.0, True):
    with pytest.raises(ValueError, match="chunk_length"):
      epoch(data, bad)
  with pytest.raises(ValueError, match="lengths"):
    epoch(data._replace(lengths=jnp.full((B,), T)))
  with pytest.raises(ValueError, match="target_mask"):
    epoch(data._replace(target_mask=jnp.ones((T, B))))
  with pytest.raises(TypeError, match="stream"):
    epoch((data.xs, data.targets))
  with pytest.raises(TypeError, match="key"):
    epoch(data, key=7)
  with pytest.raises(ValueError, match=r"stream\.targets must have shape \[T, B, \.\.\.\]"):
    epoch(data._replace(targets=data.targets[:K]))                 # the chunk count would blame K
  with pytest.raises(TypeError, match=r"stream\.xs must be a jax or NumPy array, got list"):
    epoch(data._replace(xs=np.asarray(data.xs).tolist()))
  adam = optax.adam(0.1)
  with pytest.raises(ValueError, match="opt_state does not fit params"):   # another model's
    jaxrnn.tbptt_epoch(jaxrnn.make_tbptt_step(adam), params, adam.init(uni_params(9, 2)), data, K)
  with pytest.raises(ValueError, match="bptt"):     # the hand-derived oracle takes no dropout key
    jaxrnn.tbptt_epoch(jaxrnn.make_tbptt_step(sgd, compute=jaxrnn.ComputeSpec(gradient="bptt")),
                       params, sgd.init(params), data, K, key=jax.random.key(0))
