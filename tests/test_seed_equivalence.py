"""jaxrnn reproduces the seed's NumPy SimpleRNN example to 1e-12 in float64, jitted and not.

``SimpleRNN`` below is the seed's code, copied verbatim: the specification this file holds the
library (and the tests' NumPy reference) to.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
import reference


class SimpleRNN:
    def __init__(self, input_size, hidden_size, output_size):
        self.W_xh = np.random.randn(hidden_size, input_size) * 0.01
        self.W_hh = np.random.randn(hidden_size, hidden_size) * 0.01
        self.W_hy = np.random.randn(output_size, hidden_size) * 0.01
        self.b_h = np.zeros((hidden_size, 1))
        self.b_y = np.zeros((output_size, 1))

    def step(self, x_t, h_prev):
        h_t = np.tanh(np.dot(self.W_xh, x_t) + np.dot(self.W_hh, h_prev) + self.b_h)
        y_t = np.dot(self.W_hy, h_t) + self.b_y
        return h_t, y_t

    def forward(self, inputs):
        h = np.zeros((self.W_hh.shape[0], 1))
        hs, ys = [], []
        for x_t in inputs:
            h, y = self.step(x_t, h)
            hs.append(h)
            ys.append(y)
        return hs, ys


def seed_example():
  """The seed's 'Example usage', exactly: seed 42, sizes 3/5/2, 4 steps; ``(rnn, xs [T, I],
  hs [T, H], ys [T, O])``."""
  np.random.seed(42)
  rnn = SimpleRNN(input_size=3, hidden_size=5, output_size=2)
  inputs = [np.random.randn(3, 1) for _ in range(4)]
  hs, ys = rnn.forward(inputs)
  column = lambda vectors: np.stack([v[:, 0] for v in vectors])
  return rnn, column(inputs), column(hs), column(ys)


def params_of(rnn):
  cell = jaxrnn.CellParams(W_xh=jnp.asarray(rnn.W_xh), W_hh=jnp.asarray(rnn.W_hh),
                           b_h=jnp.asarray(rnn.b_h[:, 0]))
  return jaxrnn.RNNParams(layers=((cell,),), W_hy=jnp.asarray(rnn.W_hy),
                          b_y=jnp.asarray(rnn.b_y[:, 0]))


class TestSeedVariants(chex.TestCase):
  """The seed's example through jaxrnn's public functions, jitted and not (chex variants)."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_unroll_matches_seed_simple_rnn(self):
    rnn, xs, seed_hs, seed_ys = seed_example()
    xs = jnp.asarray(xs)[:, None, :]                                    # [T=4, B=1, I=3]
    assert xs.dtype == jnp.float64
    hs, ys, final = self.variant(jaxrnn.unroll)(params_of(rnn), xs)
    chex.assert_trees_all_close((hs[:, 0], ys[:, 0], final[0, 0]), (seed_hs, seed_ys, seed_hs[-1]),
                                rtol=1e-12, atol=1e-12, strict=True)
    # The states are not trivially zero: the comparison has something to compare.
    assert np.max(np.abs(np.asarray(hs))) > 1e-3

  @chex.variants(with_jit=True, without_jit=True)
  def test_cell_under_scan_matches_seed_step(self):
    rnn, xs, seed_hs, seed_ys = seed_example()
    step = functools.partial(jaxrnn.rnn_cell, params_of(rnn))
    h_T, ys = self.variant(lambda h, x: jax.lax.scan(step, h, x))(jnp.zeros((1, 5)),
                                                                  jnp.asarray(xs))  # unbatched
    chex.assert_trees_all_close((ys, h_T[0]), (seed_ys, seed_hs[-1]), rtol=1e-12, atol=1e-12,
                                strict=True)


def test_the_reference_is_the_seed():
  """The NumPy oracle every other test module compares against computes the seed's model."""
  rnn, xs, seed_hs, seed_ys = seed_example()
  params = reference.as_numpy(params_of(rnn))
  top, _, final, _ = reference.forward(params, xs[:, None, :])
  chex.assert_trees_all_close((top[:, 0], reference.readout(params, top)[:, 0], final[0, 0]),
                              (seed_hs, seed_ys, seed_hs[-1]), rtol=1e-12, atol=1e-12, strict=True)


def test_normal_scheme_has_the_seed_scale():
  params = jaxrnn.init_params(jax.random.key(0), 300, 200, 100, init=jaxrnn.InitSpec("normal"))
  cell = params.layers[0][0]
  for w in (cell.W_xh, cell.W_hh, params.W_hy):
    assert abs(float(jnp.std(w)) - 0.01) < 0.0005
    assert abs(float(jnp.mean(w))) < 0.0005
  chex.assert_trees_all_equal((cell.b_h, params.b_y), (jnp.zeros(200), jnp.zeros(100)))
