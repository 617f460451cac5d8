"""gradient_flow: ||dh_t/dh_k|| per layer and direction, against the closed-form Jacobian product
of the NumPy reference's path, the bound ||W_hh||^(t-k) ||act'||^(t-k), vanishing and exploding
chains, and its argument checks."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxrnn
import reference
from conftest import MODELS, random_params

I, H, O = 3, 5, 2

flow_of = jax.jit(jaxrnn.gradient_flow, static_argnames=("layer", "direction", "model"))


def reference_flow(params, xs, h0, layer, direction, activation="tanh"):
  """``(norms, w_norm, act_slope)`` from the NumPy reference's path of cell ``(layer, direction)``.

  ``h_i = act(a_i)`` with ``a_i = W_xh x_i + W_hh h_{i-1} + b_h``, so
  ``J_i = dh_i/dh_{i-1} = diag(act'(h_i)) W_hh`` (``act'`` written in ``h``) and
  ``N[t, k] = ||J_t ... J_{k+1}||_2`` (the identity for ``t = k``, 0 for ``k > t``); the steps
  are counted in the order the cell reads them.
  """
  p = reference.as_numpy(params)
  _, states, _, _ = reference.forward(p, np.asarray(xs)[:, None], np.asarray(h0)[:, None], None,
                                      activation)
  num_steps = len(xs)
  order = list(range(num_steps)) if direction == 0 else list(reversed(range(num_steps)))
  hs = states[layer][direction][order, 0]                                   # [T, H] read order
  W_hh = p[0][layer][direction][1]
  slopes = reference.act_derivative(activation, hs)                         # [T, H]
  jacobians = slopes[:, :, None] * W_hh[None]                               # [T, H, H]
  norms = np.zeros((num_steps + 1, num_steps + 1))
  for k in range(num_steps + 1):
    m = np.eye(len(W_hh))
    norms[k, k] = 1.0
    for t in range(k + 1, num_steps + 1):
      m = jacobians[t - 1] @ m
      norms[t, k] = np.linalg.norm(m, 2)
  return norms, np.linalg.norm(W_hh, 2), np.max(np.abs(slopes))


def scaled(params, radius):
  """Every ``W_hh`` rescaled to spectral norm ``radius``."""
  rescale = lambda c: c._replace(W_hh=radius * c.W_hh / jnp.linalg.norm(c.W_hh, ord=2))
  return params._replace(layers=tuple(tuple(rescale(c) for c in layer) for layer in params.layers))


def cells_of(num_layers, bidirectional):
  return [(l, d) for l in range(num_layers) for d in range(2 if bidirectional else 1)]


class TestGradientFlowVariants(chex.TestCase):
  """jaxrnn.gradient_flow jitted and not (chex variants)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1, False, 0, 0, "tanh"), (2, True, 1, 1, "tanh"),
                            (2, True, 0, 1, "relu"))
  def test_norms_match_the_reference_jacobian_product(self, num_layers, bidirectional, layer,
                                                      direction, activation):
    params = random_params(0, (I, H, O), num_layers, bidirectional, max_norm=None)
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.normal(size=(6, I)))
    h0 = jnp.asarray(0.5 * rng.normal(size=(num_layers * (2 if bidirectional else 1), H)))
    model = jaxrnn.ModelSpec(activation=activation)
    run = self.variant(functools.partial(jaxrnn.gradient_flow, layer=layer, direction=direction,
                                         model=model))
    flow = run(params, xs, h0)
    assert isinstance(flow, jaxrnn.GradientFlow)
    chex.assert_shape((flow.norms, flow.bound), (7, 7))
    chex.assert_shape((flow.w_norm, flow.act_slope), ())
    norms, w_norm, act_slope = reference_flow(params, xs, h0, layer, direction, activation)
    assert np.max(np.abs(norms[np.tril_indices(7, -1)] - 1)) > 0.05        # not trivial
    chex.assert_trees_all_close((flow.norms, flow.w_norm, flow.act_slope),
                                (norms, w_norm, act_slope), rtol=1e-10, atol=1e-14)
    # h0 = None is zeros.
    chex.assert_trees_all_close(run(params, xs), run(params, xs, jnp.zeros_like(h0)),
                                rtol=0, atol=0)


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
    chex.assert_trees_all_close(flow.w_norm, radius, rtol=1e-10)
    assert 0 < float(flow.act_slope) <= 1.0
    assert np.all(norms <= bound * (1 + 1e-9) + 1e-300)
    chex.assert_trees_all_close(np.diag(norms), np.ones(13), rtol=1e-12)
    assert np.all(np.triu(norms, 1) == 0) and np.all(np.triu(bound, 1) == 0)
    gaps = np.subtract.outer(np.arange(13), np.arange(13))
    chex.assert_trees_all_close(np.tril(bound), np.tril(
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
    chex.assert_trees_all_close(np.tril(flow.norms), np.tril(1.5 ** np.maximum(gaps, 0)),
                                rtol=1e-12)
    chex.assert_trees_all_close(flow.norms[-1, 0], 1.5 ** 20, rtol=1e-12)
    chex.assert_trees_all_close(flow.norms, flow.bound, rtol=1e-12)


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
  with pytest.raises(ValueError, match="h0 contains NaN"):
    jaxrnn.gradient_flow(params, xs, jnp.full((num_layers * num_dirs, H), jnp.nan))
  with pytest.raises(ValueError, match=r"xs must have shape \[T, I\] = \(\*, 3\)"):
    jaxrnn.gradient_flow(params, xs[:, :2])
  with pytest.raises(TypeError, match="model must be a jaxrnn.ModelSpec"):
    jaxrnn.gradient_flow(params, xs, model=jaxrnn.ComputeSpec())


def test_an_empty_sequence_raises_naming_xs():
  """T = 0 has no step, hence no Jacobian: a ValueError naming xs, not a reduction error."""
  params = random_params(8, (I, H, O))
  with pytest.raises(ValueError, match=r"xs must hold at least one step \(T >= 1\)"):
    jaxrnn.gradient_flow(params, jnp.zeros((0, I)))
