"""Stacked and bidirectional RNNs: forward against a NumPy loop, hand BPTT against jax.grad, dropout."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.stacked import LayerParams

T, B, I, H, O = 6, 4, 3, 5, 2
LENGTHS = jnp.array([6, 2, 4, 0])

unroll = jax.jit(jaxrnn.unroll_stacked, static_argnames=(
    "activation", "output_activation", "merge", "dropout", "input_dropout", "state_dropout",
    "backward", "scan_unroll", "compute_dtype"))


def random_params(seed, num_layers, bidirectional, merge="concat"):
  """A :class:`jaxrnn.StackedParams` with N(0, 0.5^2) weights and biases (NumPy: no compiles)."""
  rng = np.random.default_rng(seed)
  num_dirs = 1 + bidirectional
  width = num_dirs * H if merge == "concat" else H
  normal = lambda *shape: jnp.asarray(0.5 * rng.normal(size=shape))
  layers = tuple(tuple(LayerParams(normal(H, I if l == 0 else width), normal(H, H), normal(H))
                       for _ in range(num_dirs)) for l in range(num_layers))
  return jaxrnn.StackedParams(layers, normal(O, width), normal(O))


def numpy_reference(params, xs, h0, lengths, activation, merge):
  """Per sequence, per layer, per direction: a plain loop over that sequence's own steps."""
  act = np.tanh if activation == "tanh" else lambda z: np.maximum(z, 0)
  params = jax.tree.map(np.asarray, params)
  xs, h0 = np.asarray(xs), np.asarray(h0)
  num_dirs = len(params.layers[0])
  width = params.W_hy.shape[1]
  hs = np.zeros((T, B, width))
  final = np.zeros_like(h0)
  for b in range(B):
    n = int(lengths[b])
    x = xs[:n, b]
    for l, layer in enumerate(params.layers):
      outs = []
      for d, p in enumerate(layer):
        h = h0[l * num_dirs + d, b]
        out = np.zeros((n, H))
        for t in (range(n) if d == 0 else reversed(range(n))):
          h = act(p.W_xh @ x[t] + p.W_hh @ h + p.b_h)
          out[t] = h
        final[l * num_dirs + d, b] = h
        outs.append(out)
      x = np.concatenate(outs, -1) if merge == "concat" else sum(outs)
    hs[:n, b] = x
  return hs, final


@pytest.mark.parametrize("num_layers,bidirectional,merge,activation", [
    (1, False, "concat", "tanh"), (2, True, "concat", "relu"), (3, True, "sum", "tanh")])
def test_forward_matches_numpy_loop(num_layers, bidirectional, merge, activation):
  params = random_params(num_layers + 3 * bidirectional, num_layers, bidirectional, merge)
  xs = jax.random.normal(jax.random.key(10), (T, B, I))
  h0 = jax.random.normal(jax.random.key(11), (num_layers * (1 + bidirectional), B, H))
  hs, ys, final = unroll(params, xs, h0, LENGTHS, activation, merge=merge)
  ref_hs, ref_final = numpy_reference(params, xs, h0, LENGTHS, activation, merge)
  np.testing.assert_allclose(hs, ref_hs, atol=1e-12)
  np.testing.assert_allclose(final, ref_final, atol=1e-12)
  live = np.arange(T)[:, None, None] < np.asarray(LENGTHS)[None, :, None]
  np.testing.assert_allclose(ys, np.where(live, ref_hs @ np.asarray(params.W_hy).T
                                          + np.asarray(params.b_y), 0), atol=1e-12)


def test_one_layer_is_unroll():
  params = random_params(0, 1, True)
  fwd, rev = params.layers[0]
  xs = jax.random.normal(jax.random.key(1), (T, B, I))
  hs, _, final = unroll(params, xs, lengths=LENGTHS)
  for d, (p, reverse) in enumerate([(fwd, False), (rev, True)]):
    rnn = jaxrnn.RNNParams(p.W_xh, p.W_hh, params.W_hy[:, :H], p.b_h, params.b_y)
    ref, _ = jaxrnn.unroll(rnn, xs, lengths=LENGTHS, reverse=reverse)
    live = (np.arange(T)[:, None] < np.asarray(LENGTHS))[..., None]
    np.testing.assert_allclose(hs[..., d * H:(d + 1) * H], np.where(live, ref, 0), atol=1e-14)
    np.testing.assert_allclose(final[d], jaxrnn.final_state(ref, reverse), atol=1e-14)


@pytest.mark.parametrize("num_layers,bidirectional,merge,activation,dropout", [
    (1, False, "concat", "tanh", False), (1, True, "concat", "relu", False),
    (2, False, "concat", "relu", True), (2, True, "sum", "tanh", True),
    (3, True, "concat", "tanh", False)])
def test_hand_bptt_matches_autodiff(num_layers, bidirectional, merge, activation, dropout):
  """Gradients through the hand-derived per-layer backward equal jax.grad through lax.scan."""
  params = random_params(num_layers + 3 * bidirectional, num_layers, bidirectional, merge)
  xs = jax.random.normal(jax.random.key(20), (T, B, I))
  h0 = jax.random.normal(jax.random.key(21), (num_layers * (1 + bidirectional), B, H))
  targets = jax.random.randint(jax.random.key(22), (T, B), 0, O)
  rates = dict(dropout=0.3, input_dropout=0.2, state_dropout=0.25) if dropout else {}

  @jax.jit
  def grads(params, xs, h0, lengths):
    def loss(params, xs, h0, backward):
      return jaxrnn.stacked_loss(params, xs, targets, lengths=lengths, h0=h0,
                                 activation=activation, reduction="mean", merge=merge,
                                 key=jax.random.key(5), backward=backward, **rates)[0]
    return [jax.grad(loss, argnums=(0, 1, 2))(params, xs, h0, b) for b in ("fused", "autodiff")]

  fused, autodiff = grads(params, xs, h0, LENGTHS)
  diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                          fused, autodiff)))
  print(f"max |fused - autodiff| = {diff:.3g}")
  assert diff <= 1e-10
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(fused)) > 1e-3


def identity_layer(size):
  return LayerParams(W_xh=jnp.eye(size), W_hh=jnp.zeros((size, size)), b_h=jnp.zeros(size))


def test_dropout_masks():
  """Between layers a fresh mask per step; variational input/state masks fixed over time."""
  xs = jnp.ones((T, B, H))
  key = jax.random.key(0)
  # Two ReLU identity layers: y = m_t * x, with a fresh torch-style mask m_t at every step.
  two = jaxrnn.StackedParams(((identity_layer(H),), (identity_layer(H),)), jnp.eye(H),
                             jnp.zeros(H))
  hs = unroll(two, xs, activation="relu", dropout=0.5, key=key).hs
  assert set(np.unique(hs)) == {0.0, 2.0}
  assert len({np.asarray(h).tobytes() for h in hs}) > 1
  np.testing.assert_array_equal(unroll(two, xs, activation="relu", dropout=0.5).hs, xs)
  one = jaxrnn.StackedParams(((identity_layer(H),),), jnp.eye(H), jnp.zeros(H))
  np.testing.assert_array_equal(unroll(one, xs, activation="relu", dropout=0.5, key=key).hs, xs)
  # Variational input dropout: the same [B, I] mask at every step.
  hs = unroll(one, xs, activation="relu", input_dropout=0.5, key=key).hs
  assert set(np.unique(hs)) == {0.0, 2.0}
  np.testing.assert_array_equal(hs, jnp.broadcast_to(hs[0], hs.shape))
  # Variational state dropout: h_t = relu(W_hh diag(m) h_{t-1}) = m^t h_0 with W_hh = I.
  state = jaxrnn.StackedParams(((LayerParams(jnp.zeros((H, H)), jnp.eye(H), jnp.zeros(H)),),),
                               jnp.eye(H), jnp.zeros(H))
  h0 = jnp.ones((1, B, H))
  hs = unroll(state, xs, h0, activation="relu", state_dropout=0.5, key=key).hs
  m = hs[0, 0]
  assert set(np.unique(m)) == {0.0, 2.0}
  np.testing.assert_array_equal(hs, m ** jnp.arange(1, T + 1)[:, None, None] * h0)


def test_batch_first_and_defaults():
  params = random_params(3, 2, True)
  xs = jax.random.normal(jax.random.key(4), (T, B, I))
  hs, ys, final = unroll(params, xs, lengths=LENGTHS)
  bf = jaxrnn.unroll_stacked_batch_first(params, jnp.swapaxes(xs, 0, 1), lengths=LENGTHS)
  np.testing.assert_allclose(bf.hs, jnp.swapaxes(hs, 0, 1), atol=1e-14)
  np.testing.assert_allclose(bf.ys, jnp.swapaxes(ys, 0, 1), atol=1e-14)
  np.testing.assert_allclose(bf.final, final, atol=1e-14)
  assert final.shape == (4, B, H) and hs.shape == (T, B, 2 * H)
  np.testing.assert_allclose(final[:, 3], 0)                            # length 0 keeps h0


def test_init_and_checks():
  params = jaxrnn.init_stacked(jax.random.key(0), I, H, O, num_layers=3, bidirectional=True,
                               merge="sum", dtype=jnp.float32)
  assert [p.W_xh.shape for layer in params.layers for p in layer] == [(H, I)] * 2 + [(H, H)] * 4
  assert params.W_hy.shape == (O, H) and params.W_hy.dtype == jnp.float32
  xs = jnp.ones((T, B, I), jnp.float32)
  with pytest.raises(ValueError, match="merge='concat'"):
    jaxrnn.unroll_stacked(params, xs)
  with pytest.raises(ValueError, match=r"h0.*L\*D"):
    jaxrnn.unroll_stacked(params, xs, jnp.zeros((2, B, H), jnp.float32), merge="sum")
  with pytest.raises(ValueError, match="dropout"):
    jaxrnn.unroll_stacked(params, xs, merge="sum", dropout=1.0)
  with pytest.raises(TypeError, match="dtype"):
    jaxrnn.unroll_stacked(params, jnp.ones((T, B, I)), merge="sum")
  with pytest.raises(ValueError, match="num_layers"):
    jaxrnn.init_stacked(jax.random.key(0), I, H, O, num_layers=0)
  bad = params._replace(layers=params.layers[:1] + ((params.layers[1][0],),) + params.layers[2:])
  with pytest.raises(ValueError, match="directions"):
    jaxrnn.unroll_stacked(bad, xs, merge="sum")
