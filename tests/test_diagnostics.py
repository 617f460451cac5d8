"""gradient_flow: ||dh_t/dh_k|| per layer and direction, against the closed-form Jacobian product
of the NumPy reference's path, the bound ||W_hh||^(t-k) ||act'||^(t-k), vanishing and exploding
chains, and its argument checks; lyapunov_exponents against the NumPy reference's QR loop and
the log-moduli of a constant normal Jacobian's eigenvalues."""

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


@pytest.mark.parametrize("num_layers,bidirectional,layer,direction,activation,start,stride", [
    (1, False, 0, 0, "tanh", 0, 1), (2, True, 1, 1, "tanh", 2, 3), (2, True, 1, 1, "relu", 1, 2)])
def test_norms_from_one_start_step_are_a_column_of_the_reference_table(
    num_layers, bidirectional, layer, direction, activation, start, stride):
  """``start=k, stride=s``: ``norms[i] = ||dh_{k+i s}/dh_k||``, the NumPy table's column ``k``
  at rows ``k, k + s, ...``; ``bound`` likewise; ``log_norms``, ``log_bound`` their logs."""
  params = random_params(0, (I, H, O), num_layers, bidirectional, max_norm=None)
  rng = np.random.default_rng(1)
  xs = jnp.asarray(rng.normal(size=(12, I)))
  h0 = jnp.asarray(0.5 * rng.normal(size=(num_layers * (2 if bidirectional else 1), H)))
  model = jaxrnn.ModelSpec(activation=activation)
  flow = jax.jit(jaxrnn.gradient_flow, static_argnames=("start", "stride", "layer", "direction",
                                                        "model"))(
      params, xs, h0, start=start, stride=stride, layer=layer, direction=direction, model=model)
  norms, w_norm, act_slope = reference_flow(params, xs, h0, layer, direction, activation)
  steps = np.arange(start, 13, stride)
  chex.assert_shape((flow.norms, flow.bound, flow.log_norms, flow.log_bound), (len(steps),))
  chex.assert_trees_all_close((flow.norms, flow.log_norms, flow.w_norm, flow.act_slope),
                              (norms[steps, start], np.log(norms[steps, start]), w_norm,
                               act_slope), rtol=1e-10, atol=1e-14)
  rate = (w_norm * act_slope) ** (steps - start)
  chex.assert_trees_all_close((flow.bound, flow.log_bound), (rate, np.log(rate)), rtol=1e-10,
                              atol=1e-14)


@pytest.mark.parametrize("radius", [0.5, 1.5])
def test_long_chains_keep_their_logarithm_where_the_norm_over_or_underflows(radius):
  """ReLU, ``W_hh = radius I``, ``W_xh = 0``, ``b_h = 1e-100``, ``h_0 = 0``: the states stay
  positive (and finite: ``h_t < 1.5^t 2e-100``), so ``||dh_t/dh_0|| = radius^t`` exactly, which
  leaves float64 before ``t = 2000`` (``0.5^2000 = 0``, ``1.5^2000 = inf``); ``log_norms`` is
  ``t log radius`` and equals ``log_bound`` (the bound is attained)."""
  cell = jaxrnn.CellParams(jnp.zeros((H, I)), radius * jnp.eye(H), jnp.full(H, 1e-100))
  params = random_params(6, (I, H, O))._replace(layers=((cell,),))
  xs = jnp.asarray(np.random.default_rng(7).normal(size=(2000, I)))
  flow = jaxrnn.gradient_flow(params, xs, start=0, stride=100,
                              model=jaxrnn.ModelSpec(activation="relu"))
  steps = np.arange(0, 2001, 100)
  chex.assert_trees_all_close(flow.log_norms, steps * np.log(radius), rtol=1e-12, atol=1e-12)
  chex.assert_trees_all_close(flow.log_bound, flow.log_norms, rtol=1e-12, atol=1e-12)
  assert flow.norms[-1] == (0 if radius < 1 else np.inf) == flow.bound[-1]


def test_start_and_stride_are_checked():
  params = random_params(8, (I, H, O))
  xs = jnp.zeros((4, I))
  for kwargs, message in [({"start": 5}, r"start must be an int in \[0, T\] = \[0, 4\], got 5"),
                          ({"start": -1}, "start must be an int in"),
                          ({"start": 1.0}, "start must be an int in"),
                          ({"start": 0, "stride": 0}, "stride must be an int >= 1, got 0"),
                          ({"stride": 2}, "stride is for norms from one start step")]:
    with pytest.raises(ValueError, match=message):
      jaxrnn.gradient_flow(params, xs, **kwargs)


lyapunov_of = jax.jit(jaxrnn.lyapunov_exponents,
                      static_argnames=("k", "burn_in", "layer", "direction", "model"))


class TestLyapunovVariants(chex.TestCase):
  """jaxrnn.lyapunov_exponents jitted and not, against the NumPy reference's QR loop."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((0, 1, False, 0, 0, "tanh", 5, 0), (0, 2, True, 1, 1, "tanh", 3, 4),
                            (5, 2, True, 1, 1, "relu", 2, 0))
  def test_exponents_match_the_reference(self, seed, num_layers, bidirectional, layer, direction,
                                         activation, k, burn_in):
    """(Seed 5's ReLU path keeps at least 2 units on at every step: finite exponents.)"""
    params = random_params(seed, (I, H, O), num_layers, bidirectional, max_norm=None)
    rng = np.random.default_rng(2)
    xs = jnp.asarray(rng.normal(size=(40, I)))
    h0 = jnp.asarray(0.5 * rng.normal(size=(num_layers * (2 if bidirectional else 1), H)))
    model = jaxrnn.ModelSpec(activation=activation)
    run = self.variant(functools.partial(jaxrnn.lyapunov_exponents, k=k, burn_in=burn_in,
                                         layer=layer, direction=direction, model=model))
    exponents = run(params, xs, h0)
    chex.assert_shape(exponents, (k,))
    expected = reference.lyapunov_exponents(
        reference.step_jacobians(params, xs, h0, layer, direction, activation), k, burn_in)
    assert np.all(np.isfinite(expected)) and np.ptp(expected) > 0.1     # not trivial
    chex.assert_trees_all_close(exponents, expected, rtol=1e-10, atol=1e-12)


def test_exponents_vmap_over_sequences():
  """``vmap`` over ``xs [B, T, I]`` and ``h0 [B, L*D, H]``: each row is that sequence's call."""
  params = random_params(3, (I, H, O), 2, True, max_norm=None)
  rng = np.random.default_rng(4)
  xs, h0 = jnp.asarray(rng.normal(size=(3, 20, I))), jnp.asarray(rng.normal(size=(3, 4, H)))
  exponents = jax.jit(jax.vmap(functools.partial(jaxrnn.lyapunov_exponents, params, k=3,
                                                 layer=1)))(xs, h0)
  chex.assert_shape(exponents, (3, 3))
  for row, x, h in zip(exponents, xs, h0):
    chex.assert_trees_all_close(row, reference.lyapunov_exponents(
        reference.step_jacobians(params, x, h, 1, 0), 3), rtol=1e-10, atol=1e-12)


def averaging_error(W_hh, num_steps):
  """The exact ``1/T`` term of Benettin's average for a constant symmetric ``J_t = W_hh``.

  With ``W_hh = U diag(mu) U^T`` (``|mu|`` descending, distinct) and ``C = U^T Q_0``, the QR
  steps multiply to the QR factorisation of ``W_hh^T Q_0 = U diag(mu^T) C``, whose ``i``-th
  diagonal is ``vol_i / vol_{i-1}``, ``vol_i`` the volume spanned by its first ``i`` columns.
  By Cauchy-Binet ``vol_i = prod_{j <= i} |mu_j|^T |det C[:i, :i]| (1 + O(r^(2T)))``, ``r`` the
  largest ratio ``|mu_{j+1} / mu_j|``, so ``lambda_i = log|mu_i| + e_i`` with
  ``e_i = (log|det C[:i, :i]| - log|det C[:i-1, :i-1]|) / T``: the average over ``T`` steps
  misses ``log|mu_i|`` by ``e_i`` (a transient of the start ``Q_0``), up to ``r^(2T) / T``."""
  mu, U = np.linalg.eigh(W_hh)
  order = np.argsort(-np.abs(mu))
  C = U[:, order].T[:, :len(mu)]
  minors = [0.0] + [np.log(abs(np.linalg.det(C[:i, :i]))) for i in range(1, len(mu) + 1)]
  ratio = np.max(np.abs(mu[order][1:] / mu[order][:-1]))
  return np.diff(minors) / num_steps, ratio ** (2 * num_steps) / num_steps


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_exponents_of_a_constant_normal_jacobian_are_the_log_moduli_of_its_eigenvalues(
    activation):
  """Two paths where ``J_t = W_hh`` exactly, ``W_hh`` symmetric (normal):

  * tanh linearised at the origin: ``xs = 0``, ``h0 = 0``, ``b = 0`` keep ``h_t = 0``, so
    ``act' = 1``; ``W_hh = U diag(mu) U^T`` with ``mu = 0.95, -0.8, 0.6, -0.4, 0.25``;
  * ReLU with positive states: non-negative ``W_xh``, inputs, ``W_hh`` and ``h0``, positive
    ``b``, so every pre-activation is ``>= b > 0`` and ``act' = 1``; ``W_hh = 0.5 I + 0.3 A``,
    ``A`` the path graph's adjacency, ``mu_j = 0.5 + 0.6 cos(pi j / 6)``.

  The exponents are ``log|mu|``, sorted descending, up to the ``1/T`` transient
  ``e_i`` of :func:`averaging_error` (its largest ``|e_i|`` here is 5e-3 at ``T = 400``,
  stated and checked as the tolerance); with ``e_i`` added they agree to 1e-9 (the rest is
  ``r^(2T)/T`` < 1e-40 and rounding)."""
  rng = np.random.default_rng(9)
  if activation == "tanh":
    U, _ = np.linalg.qr(rng.normal(size=(H, H)))
    mu = np.array([0.95, -0.8, 0.6, -0.4, 0.25])
    W_hh = U @ np.diag(mu) @ U.T
    cell = jaxrnn.CellParams(jnp.asarray(rng.normal(size=(H, I))), jnp.asarray(W_hh),
                             jnp.zeros(H))
    xs, h0 = jnp.zeros((400, I)), jnp.zeros((1, H))
  else:
    mu = 0.5 + 0.6 * np.cos(np.pi * np.arange(1, H + 1) / (H + 1))
    W_hh = 0.5 * np.eye(H) + 0.3 * (np.eye(H, k=1) + np.eye(H, k=-1))
    cell = jaxrnn.CellParams(jnp.asarray(rng.uniform(size=(H, I))), jnp.asarray(W_hh),
                             jnp.asarray(rng.uniform(0.1, 1, size=H)))
    xs, h0 = jnp.asarray(rng.uniform(size=(400, I))), jnp.asarray(rng.uniform(size=(1, H)))
  params = random_params(0, (I, H, O))._replace(layers=((cell,),))
  model = jaxrnn.ModelSpec(activation=activation)
  exponents = np.asarray(lyapunov_of(params, xs, h0, k=H, model=model))
  exact = np.sort(np.log(np.abs(mu)))[::-1]
  error, rest = averaging_error(W_hh, 400)
  assert rest < 1e-40 and 1e-5 < np.max(np.abs(error)) < 1e-2
  assert np.all(np.abs(exponents - exact) <= np.abs(error) + 1e-9)
  np.testing.assert_allclose(exponents, exact + error, rtol=0, atol=1e-9)
  if activation == "relu":
    assert np.all(np.asarray(jaxrnn.unroll(params, xs[:, None], h0[:, None],
                                           model=model).final) > 0)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_bad_lyapunov_arguments_raise_naming_them(num_layers, bidirectional):
  params = random_params(8, (I, H, O), num_layers, bidirectional)
  xs = jnp.zeros((4, I))
  num_dirs = 2 if bidirectional else 1
  for kwargs, message in [({"k": 0}, r"k must be an int in \[1, H\] = \[1, 5\], got 0"),
                          ({"k": H + 1}, r"k must be an int in \[1, H\] = \[1, 5\], got 6"),
                          ({"k": 2.0}, "k must be an int in"), ({"k": True}, "k must be an int"),
                          ({"burn_in": 4}, r"burn_in must be an int in \[0, T\) = \[0, 4\)"),
                          ({"burn_in": -1}, "burn_in must be an int in"),
                          ({"layer": num_layers}, r"layer must be an int in \[0, "),
                          ({"direction": num_dirs}, r"direction must be an int in \[0, ")]:
    with pytest.raises(ValueError, match=message):
      jaxrnn.lyapunov_exponents(params, xs, **kwargs)
  with pytest.raises(ValueError, match=r"xs must hold at least one step \(T >= 1\)"):
    jaxrnn.lyapunov_exponents(params, jnp.zeros((0, I)))
  with pytest.raises(ValueError, match="xs contains NaN or inf"):
    jaxrnn.lyapunov_exponents(params, xs.at[2, 1].set(jnp.inf))
  with pytest.raises(ValueError, match="h0 contains NaN"):
    jaxrnn.lyapunov_exponents(params, xs, jnp.full((num_layers * num_dirs, H), jnp.nan))
