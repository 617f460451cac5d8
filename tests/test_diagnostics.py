"""The seed's bound ||dh_t/dh_k|| <= ||W_hh||^(t-k) ||act'||^(t-k), and vanishing vs exploding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn


def scaled(params, radius):
  """params with W_hh rescaled to spectral norm ``radius``."""
  return params._replace(W_hh=radius * params.W_hh / jnp.linalg.norm(params.W_hh, ord=2))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("radius", [0.5, 1.0, 1.5, 3.0])
def test_bound_holds_for_every_pair(activation, radius):
  params = scaled(jaxrnn.init_params(jax.random.key(0), 3, 8, 2, scheme="glorot"), radius)
  xs = jax.random.normal(jax.random.key(1), (25, 3))
  flow = jaxrnn.gradient_flow(params, xs, activation=activation)
  np.testing.assert_allclose(flow.w_norm, radius, rtol=1e-10)
  assert float(flow.act_slope) <= 1.0
  assert np.all(np.asarray(flow.norms) <= np.asarray(flow.bound) * (1 + 1e-9) + 1e-300)
  np.testing.assert_allclose(np.diag(flow.norms), 1.0, rtol=1e-12)
  assert np.all(np.triu(np.asarray(flow.norms), 1) == 0)


def test_norms_match_an_explicit_jacobian_product():
  params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2, scheme="orthogonal")
  xs = jax.random.normal(jax.random.key(1), (6, 3))
  flow = jaxrnn.gradient_flow(params, xs)
  h_of_h2 = lambda h2: jaxrnn.unroll(params, xs[2:, None], h0=h2[None])[0][-1, 0]   # h_6(h_2)
  h2 = jaxrnn.unroll(params, xs[:, None])[0][1, 0]
  expected = np.linalg.norm(np.asarray(jax.jacobian(h_of_h2)(h2)), ord=2)
  np.testing.assert_allclose(flow.norms[6, 2], expected, rtol=1e-10)


def test_gradients_vanish_for_a_small_recurrent_norm():
  params = scaled(jaxrnn.init_params(jax.random.key(0), 3, 16, 2, scheme="orthogonal"), 0.5)
  flow = jaxrnn.gradient_flow(params, jax.random.normal(jax.random.key(1), (40, 3)))
  norms = np.asarray(flow.norms[-1])                       # ||dh_T/dh_k||, k = 0..T
  assert norms[0] < 0.5 ** 40 * 1.0001                     # < 1e-12 after 40 steps
  assert np.all(np.diff(norms) > 0)                        # shrinks the further back k is


def test_gradients_explode_for_a_large_recurrent_norm():
  """ReLU, W_hh = 1.5 I, positive inputs: every unit stays active, the bound is attained."""
  params = jaxrnn.init_params(jax.random.key(0), 3, 8, 2, scheme="identity")
  params = params._replace(W_hh=1.5 * params.W_hh, W_xh=jnp.abs(params.W_xh))
  flow = jaxrnn.gradient_flow(params, jnp.abs(jax.random.normal(jax.random.key(1), (30, 3))),
                              activation="relu")
  gaps = np.arange(30, -1, -1)                             # T - k
  np.testing.assert_allclose(flow.norms[-1], 1.5 ** gaps, rtol=1e-10)
  np.testing.assert_allclose(flow.norms[-1], flow.bound[-1], rtol=1e-10)
