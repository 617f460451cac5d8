"""jaxrnn.rnn_cell: one step of a unidirectional stack is the equation, for any batch shape."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from conftest import MODELS, random_params, random_problem
from test_unroll import NP_ACT, NP_OUT, numpy_unroll

cell = jax.jit(jaxrnn.rnn_cell, static_argnames="model")


@pytest.mark.parametrize("num_layers,activation,output_activation",
                         [(1, "tanh", "sigmoid"), (1, "relu", "softmax"), (2, "relu", "identity"),
                          (2, "tanh", "tanh")])
def test_cell_is_the_equation(num_layers, activation, output_activation):
  params = random_params(num_layers, (4, 5, 3), num_layers=num_layers)
  rng = np.random.default_rng(num_layers)
  h_prev, x = rng.standard_normal((num_layers, 3, 5)), rng.standard_normal((3, 4))
  model = jaxrnn.ModelSpec(activation=activation, output_activation=output_activation)
  h_t, y_t = cell(params, jnp.asarray(h_prev), jnp.asarray(x), model=model)
  p = jax.tree.map(np.asarray, params)
  want, inp = [], x
  for l, (c,) in enumerate(p.layers):
    inp = NP_ACT[activation](inp @ c.W_xh.T + h_prev[l] @ c.W_hh.T + c.b_h)
    want.append(inp)
  assert h_t.shape == (num_layers, 3, 5) and y_t.shape == (3, 3)
  np.testing.assert_allclose(h_t, np.stack(want), rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(y_t, NP_OUT[output_activation](inp @ p.W_hy.T + p.b_y), rtol=1e-12)


def test_cell_works_on_one_example_and_any_batch_shape():
  params = random_params(0, (4, 5, 3), num_layers=2)
  x = jnp.asarray(np.random.default_rng(0).standard_normal(4))
  single_h, single_y = jaxrnn.rnn_cell(params, jnp.zeros((2, 5)), x)
  batch_h, batch_y = jaxrnn.rnn_cell(params, jnp.zeros((2, 2, 3, 5)), jnp.broadcast_to(x, (2, 3, 4)))
  assert single_h.shape == (2, 5) and single_y.shape == (3,)
  assert batch_h.shape == (2, 2, 3, 5) and batch_y.shape == (2, 3, 3)
  np.testing.assert_allclose(batch_h[:, 1, 2], single_h, rtol=1e-12, atol=1e-14)  # GPU: gemm vs
  np.testing.assert_allclose(batch_y[1, 2], single_y, rtol=1e-12, atol=1e-14)    # gemv order


@pytest.mark.parametrize("num_layers", [1, 2])
def test_cell_under_scan_equals_numpy_unroll(num_layers):
  prob = random_problem(2, 6, 3, num_layers=num_layers)
  model = jaxrnn.ModelSpec(output_activation="softmax")
  step = functools.partial(jaxrnn.rnn_cell, prob.params, model=model)
  final, ys = jax.jit(lambda h, xs: jax.lax.scan(step, h, xs))(prob.h0, prob.batch.xs)
  _, want_ys, want_final = numpy_unroll(prob.params, prob.batch.xs, prob.h0,
                                        output_activation="softmax")
  np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(final, want_final, rtol=1e-12, atol=1e-14)


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
  with pytest.raises(ValueError, match="batch shape"):
    jaxrnn.rnn_cell(params, jnp.zeros((2, 6, 5)), jnp.zeros((7, 3)))
  with pytest.raises(ValueError, match="model.activation"):
    jaxrnn.rnn_cell(params, jnp.zeros((2, 5)), jnp.zeros(3), jaxrnn.ModelSpec(activation="elu"))
  with pytest.raises(TypeError, match="params"):
    jaxrnn.rnn_cell(tuple(params), jnp.zeros((2, 5)), jnp.zeros(3))
