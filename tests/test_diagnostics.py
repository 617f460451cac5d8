"""gradient_flow: ||dh_t/dh_k|| per layer and direction, against an explicit Jacobian product,
the bound ||W_hh||^(t-k) ||act'||^(t-k), vanishing and exploding chains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from conftest import MODELS, random_params

I, H, O = 3, 5, 2
ACTS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


flow_of = jax.jit(jaxrnn.gradient_flow, static_argnames=("layer", "direction", "model"))


def step(cell, h_prev, x_t, activation="tanh"):
  """One independent single step ``act(W_xh x + W_hh h + b)`` on one sequence, ``[H]``."""
  return ACTS[activation](jnp.dot(cell.W_xh, x_t) + jnp.dot(cell.W_hh, h_prev) + cell.b_h)


def cell_path(params, xs, h0, layer, direction, activation="tanh"):
  """``(inputs [T, I_l], states h_0..h_T [T+1, H])`` of cell ``(layer, direction)`` in the order
  it reads its steps, by running the model step by step in NumPy-like Python loops."""
  num_dirs = len(params.layers[0])
  x = xs
  for l, cells in enumerate(params.layers):
    outs = []
    for d, cell in enumerate(cells):
      order = range(len(xs)) if d == 0 else range(len(xs) - 1, -1, -1)
      h, hs, ins = h0[l * num_dirs + d], [h0[l * num_dirs + d]], []
      out = [None] * len(xs)
      for t in order:
        ins.append(x[t])
        h = step(cell, h, x[t], activation)
        hs.append(h)
        out[t] = h
      if (l, d) == (layer, direction):
        return jnp.stack(ins), jnp.stack(hs)
      outs.append(jnp.stack(out))
    x = jnp.concatenate(outs, axis=-1)
  raise AssertionError("no such cell")


def explicit_norms(params, xs, h0, layer, direction, activation="tanh"):
  """``N[t, k] = ||J_t ... J_{k+1}||_2`` with ``J_i = jax.jacfwd(step)`` at the path's states."""
  cell = params.layers[layer][direction]
  inputs, hs = cell_path(params, xs, h0, layer, direction, activation)
  jac = jax.jacfwd(lambda h, x: step(cell, h, x, activation))
  jacobians = [np.asarray(jac(hs[i - 1], inputs[i - 1])) for i in range(1, len(xs) + 1)]
  num = len(xs) + 1
  norms = np.zeros((num, num))
  for k in range(num):
    m = np.eye(H)
    norms[k, k] = 1.0
    for t in range(k + 1, num):
      m = jacobians[t - 1] @ m
      norms[t, k] = np.linalg.norm(m, 2)
  return norms


def scaled(params, radius):
  """Every ``W_hh`` rescaled to spectral norm ``radius``."""
  rescale = lambda c: c._replace(W_hh=radius * c.W_hh / jnp.linalg.norm(c.W_hh, ord=2))
  return params._replace(layers=tuple(tuple(rescale(c) for c in layer) for layer in params.layers))


def cells_of(num_layers, bidirectional):
  return [(l, d) for l in range(num_layers) for d in range(2 if bidirectional else 1)]


@pytest.mark.parametrize("num_layers,bidirectional,layer,direction",
                         [(1, False, 0, 0), (2, True, 1, 1), (2, True, 0, 1)])
def test_norms_match_an_explicit_jacobian_product(num_layers, bidirectional, layer, direction):
  params = random_params(0, (I, H, O), num_layers, bidirectional, max_norm=None)
  rng = np.random.default_rng(1)
  xs = jnp.asarray(rng.normal(size=(6, I)))
  h0 = jnp.asarray(0.5 * rng.normal(size=(num_layers * (2 if bidirectional else 1), H)))
  flow = flow_of(params, xs, h0, layer=layer, direction=direction)
  expected = explicit_norms(params, xs, h0, layer, direction)
  assert np.max(np.abs(expected[np.tril_indices(7, -1)] - 1)) > 0.05      # not trivial
  np.testing.assert_allclose(flow.norms, expected, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(flow.w_norm,
                             np.linalg.norm(params.layers[layer][direction].W_hh, 2), rtol=1e-12)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_bound_holds_for_every_pair(num_layers, bidirectional, activation):
  xs = jnp.asarray(np.random.default_rng(3).normal(size=(12, I)))
  model = jaxrnn.ModelSpec(activation=activation)
  for (layer, direction), radius in zip(cells_of(num_layers, bidirectional) * 2,
                                        [0.5, 1.5, 3.0, 0.9]):
    params = scaled(random_params(2, (I, H, O), num_layers, bidirectional), radius)
    flow = flow_of(params, xs, layer=layer, direction=direction, model=model)
    norms, bound = np.asarray(flow.norms), np.asarray(flow.bound)
    np.testing.assert_allclose(flow.w_norm, radius, rtol=1e-10)
    assert 0 < float(flow.act_slope) <= 1.0
    assert np.all(norms <= bound * (1 + 1e-9) + 1e-300)
    np.testing.assert_allclose(np.diag(norms), 1.0, rtol=1e-12)
    assert np.all(np.triu(norms, 1) == 0) and np.all(np.triu(bound, 1) == 0)
    gaps = np.subtract.outer(np.arange(13), np.arange(13))
    np.testing.assert_allclose(np.tril(bound), np.tril(
        (radius * float(flow.act_slope)) ** np.maximum(gaps, 0)), rtol=1e-10)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_gradients_vanish_for_a_small_recurrent_norm(num_layers, bidirectional):
  params = scaled(random_params(4, (I, 8, O), num_layers, bidirectional), 0.5)
  xs = jnp.asarray(np.random.default_rng(5).normal(size=(30, I)))
  layer, direction = cells_of(num_layers, bidirectional)[-1]
  flow = flow_of(params, xs, layer=layer, direction=direction)
  norms = np.asarray(flow.norms[-1])                     # ||dh_T/dh_k||, k = 0..T
  assert norms[0] < 0.5 ** 30                            # < 1e-9 after 30 steps
  assert np.all(np.diff(norms) > 0)                      # shrinks the further back k is


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_gradients_explode_for_relu_and_a_large_identity(num_layers, bidirectional):
  """ReLU, ``W_hh = 1.5 I``, non-negative weights and inputs, positive biases: every unit stays
  active, so ``dh_t/dh_k = 1.5^(t-k) I`` exactly and the bound is attained."""
  params = random_params(6, (I, H, O), num_layers, bidirectional)
  positive = lambda c: jaxrnn.CellParams(jnp.abs(c.W_xh), 1.5 * jnp.eye(H), jnp.abs(c.b_h) + 0.1)
  params = params._replace(layers=tuple(tuple(positive(c) for c in layer)
                                        for layer in params.layers))
  xs = jnp.abs(jnp.asarray(np.random.default_rng(7).normal(size=(20, I))))
  model = jaxrnn.ModelSpec(activation="relu")
  gaps = np.subtract.outer(np.arange(21), np.arange(21))
  for layer, direction in cells_of(num_layers, bidirectional):
    flow = flow_of(params, xs, layer=layer, direction=direction, model=model)
    np.testing.assert_allclose(np.tril(flow.norms), np.tril(1.5 ** np.maximum(gaps, 0)),
                               rtol=1e-12)
    np.testing.assert_allclose(flow.norms[-1, 0], 1.5 ** 20, rtol=1e-12)
    np.testing.assert_allclose(flow.norms, flow.bound, rtol=1e-12)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_bad_layer_or_direction_raises(num_layers, bidirectional):
  params = random_params(8, (I, H, O), num_layers, bidirectional)
  xs = jnp.zeros((4, I))
  num_dirs = 2 if bidirectional else 1
  for kwargs, name in [({"layer": num_layers}, "layer"), ({"layer": -1}, "layer"),
                       ({"layer": 0.0}, "layer"), ({"layer": True}, "layer"),
                       ({"direction": num_dirs}, "direction"), ({"direction": -1}, "direction")]:
    with pytest.raises(ValueError, match=rf"{name} must be an int in \[0, "):
      jaxrnn.gradient_flow(params, xs, **kwargs)
  with pytest.raises(ValueError, match=r"xs must have shape \[T, I\]"):
    jaxrnn.gradient_flow(params, xs[None])
  with pytest.raises(ValueError, match="h0"):
    jaxrnn.gradient_flow(params, xs, jnp.zeros((num_layers * num_dirs + 1, H)))
