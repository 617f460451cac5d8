"""jaxrnn reproduces the seed's NumPy SimpleRNN example to 1e-12 in float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from seed_simple_rnn import SimpleRNN


def seed_example():
  """The seed's 'Example usage', exactly: seed 42, sizes 3/5/2, 4 steps."""
  np.random.seed(42)
  rnn = SimpleRNN(input_size=3, hidden_size=5, output_size=2)
  inputs = [np.random.randn(3, 1) for _ in range(4)]
  hs, ys = rnn.forward(inputs)
  return rnn, inputs, hs, ys


def params_of(rnn):
  cell = jaxrnn.CellParams(W_xh=jnp.asarray(rnn.W_xh), W_hh=jnp.asarray(rnn.W_hh),
                           b_h=jnp.asarray(rnn.b_h[:, 0]))
  return jaxrnn.RNNParams(layers=((cell,),), W_hy=jnp.asarray(rnn.W_hy),
                          b_y=jnp.asarray(rnn.b_y[:, 0]))


def test_unroll_matches_seed_simple_rnn():
  rnn, inputs, seed_hs, seed_ys = seed_example()
  params = params_of(rnn)
  xs = jnp.asarray(np.stack([x[:, 0] for x in inputs]))[:, None, :]    # [T=4, B=1, I=3]
  assert xs.dtype == jnp.float64
  hs, ys, final = jaxrnn.unroll(params, xs)
  np.testing.assert_allclose(np.asarray(hs[:, 0]), np.stack([h[:, 0] for h in seed_hs]),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(np.asarray(ys[:, 0]), np.stack([y[:, 0] for y in seed_ys]),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(np.asarray(final[0, 0]), seed_hs[-1][:, 0], rtol=1e-12, atol=1e-12)
  # The states are not trivially zero: the comparison has something to compare.
  assert np.max(np.abs(np.asarray(hs))) > 1e-3


def test_cell_under_scan_matches_seed_step():
  rnn, inputs, seed_hs, seed_ys = seed_example()
  params = params_of(rnn)
  xs = jnp.asarray(np.stack([x[:, 0] for x in inputs]))                # [T, I], unbatched
  h_T, ys = jax.lax.scan(functools.partial(jaxrnn.rnn_cell, params), jnp.zeros((1, 5)), xs)
  np.testing.assert_allclose(np.asarray(ys), np.stack([y[:, 0] for y in seed_ys]),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(np.asarray(h_T[0]), seed_hs[-1][:, 0], rtol=1e-12, atol=1e-12)


def test_normal_scheme_has_the_seed_scale():
  params = jaxrnn.init_params(jax.random.key(0), 300, 200, 100, scheme="normal")
  cell = params.layers[0][0]
  for w in (cell.W_xh, cell.W_hh, params.W_hy):
    assert abs(float(jnp.std(w)) - 0.01) < 0.0005
    assert abs(float(jnp.mean(w))) < 0.0005
  assert not np.any(np.asarray(cell.b_h)) and not np.any(np.asarray(params.b_y))
