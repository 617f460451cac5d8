"""jaxrnn.rnn_cell: one step of a unidirectional stack is the reference's step, for any batch shape,
jitted and not."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxrnn
import reference
from jaxrnn.cell import ACTIVATIONS, activation_derivative
from conftest import MODELS, random_params, random_problem


class TestCellVariants(chex.TestCase):
  """jaxrnn.rnn_cell jitted and not (chex variants)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1, "tanh", "sigmoid"), (1, "relu", "softmax"),
                            (2, "relu", "identity"), (2, "tanh", "tanh"))
  def test_cell_is_one_step_of_the_reference(self, num_layers, activation, output_activation):
    params = random_params(num_layers, (4, 5, 3), num_layers=num_layers)
    rng = np.random.default_rng(num_layers)
    h_prev, x = rng.standard_normal((num_layers, 3, 5)), rng.standard_normal((3, 4))
    model = jaxrnn.ModelSpec(activation=activation, output_activation=output_activation)
    cell = self.variant(functools.partial(jaxrnn.rnn_cell, model=model))
    h_t, y_t = cell(params, jnp.asarray(h_prev), jnp.asarray(x))
    p = reference.as_numpy(params)
    top, _, final, _ = reference.forward(p, x[None], h_prev, activation=activation)  # T = 1
    chex.assert_shape((h_t, y_t), [(num_layers, 3, 5), (3, 3)])
    y_want = reference.readout(p, top, output_activation)[0]
    chex.assert_trees_all_close((h_t, y_t), (final, y_want), rtol=1e-12, atol=1e-14, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  def test_cell_works_on_one_example_and_any_batch_shape(self):
    params = random_params(0, (4, 5, 3), num_layers=2)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(4))
    cell = self.variant(jaxrnn.rnn_cell)
    single = cell(params, jnp.zeros((2, 5)), x)
    batch_h, batch_y = cell(params, jnp.zeros((2, 2, 3, 5)), jnp.broadcast_to(x, (2, 3, 4)))
    chex.assert_shape(single, [(2, 5), (3,)])
    chex.assert_shape((batch_h, batch_y), [(2, 2, 3, 5), (2, 3, 3)])
    chex.assert_trees_all_close((batch_h[:, 1, 2], batch_y[1, 2]), single,  # GPU: gemm vs gemv
                                rtol=1e-12, atol=1e-14, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 2)
  def test_cell_under_scan_equals_the_reference_unroll(self, num_layers):
    prob = random_problem(2, 6, 3, num_layers=num_layers)
    model = jaxrnn.ModelSpec(output_activation="softmax")
    step = functools.partial(jaxrnn.rnn_cell, prob.params, model=model)
    final, ys = self.variant(lambda h, xs: jax.lax.scan(step, h, xs))(prob.h0, prob.batch.xs)
    p = reference.as_numpy(prob.params)
    top, _, want_final, _ = reference.forward(p, prob.batch.xs, prob.h0)
    chex.assert_trees_all_close((ys, final), (reference.readout(p, top, "softmax"), want_final),
                                rtol=1e-12, atol=1e-14, strict=True)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_activation_derivative_from_the_output_is_the_slope_at_the_input(activation):
  """``act'(z)`` from ``h = act(z)``: tanh ``1 / cosh(z)^2``, relu 1 for ``z > 0`` and 0 for
  ``z <= 0``, where ``h`` is exactly 0 (the subgradient 0 at ``z = 0``, as ``jax.nn.relu``)."""
  z = np.array([-3.0, -0.5, -1e-300, 0.0, 1e-300, 0.25, 2.0])
  slope = {"tanh": 1 / np.cosh(z) ** 2, "relu": (z > 0).astype(float)}[activation]
  h = ACTIVATIONS[activation](jnp.asarray(z))
  got = activation_derivative(jaxrnn.ModelSpec(activation=activation), h)
  np.testing.assert_allclose(got, slope, rtol=1e-12, atol=1e-15)


def test_bad_arguments_name_the_argument():
  num_layers, bidirectional = MODELS[1]
  bi = random_params(0, num_layers=num_layers, bidirectional=bidirectional)
  with pytest.raises(ValueError, match="bidirectional"):
    jaxrnn.rnn_cell(bi, jnp.zeros((4, 5)), jnp.zeros(3))
  params = random_params(0, num_layers=2)
  with pytest.raises(ValueError, match="h_prev"):
    jaxrnn.rnn_cell(params, jnp.zeros((1, 5)), jnp.zeros(3))                 # L = 2 rows
  with pytest.raises(ValueError, match="h_prev"):
    jaxrnn.rnn_cell(params, jnp.zeros((2, 4)), jnp.zeros(3))
  with pytest.raises(ValueError, match="h_prev"):
    jaxrnn.rnn_cell(params, jnp.zeros((2, 5)), jnp.zeros((7, 3)))
  with pytest.raises(ValueError, match="x_t"):
    jaxrnn.rnn_cell(params, jnp.zeros((2, 5)), jnp.zeros(4))
  with pytest.raises(ValueError, match=r"h_prev must have shape \[L, ..., H\] = \(2, 7, 5\)"):
    jaxrnn.rnn_cell(params, jnp.zeros((2, 6, 5)), jnp.zeros((7, 3)))
  with pytest.raises(ValueError, match="model.activation"):
    jaxrnn.rnn_cell(params, jnp.zeros((2, 5)), jnp.zeros(3), jaxrnn.ModelSpec(activation="elu"))
  with pytest.raises(TypeError, match="model"):
    jaxrnn.rnn_cell(params, jnp.zeros((2, 5)), jnp.zeros(3), {"activation": "tanh"})
  with pytest.raises(TypeError, match="params"):
    jaxrnn.rnn_cell(tuple(params), jnp.zeros((2, 5)), jnp.zeros(3))
