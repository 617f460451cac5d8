"""Vanishing and exploding gradients, measured.

BPTT multiplies one Jacobian per step, ``dh_t/dh_k = prod_{i=k+1}^t dh_i/dh_{i-1}``
with ``dh_i/dh_{i-1} = diag(act'(a_i + W_hh h_{i-1})) W_hh``, so

``||dh_t/dh_k|| <= ||W_hh||^(t-k) ||act'||^(t-k)``

(spectral norms, ``||act'||`` the largest ``|act'|`` on the path): below 1 the
gradient vanishes geometrically; where the Jacobians stretch, it explodes.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import checks
from jaxrnn.cell import activation_derivative, step, time_order
from jaxrnn.pytrees import CellParams, RNNParams
from jaxrnn.recurrence import previous_states
from jaxrnn.spec import PLAIN, ModelSpec, check_specs
from jaxrnn.unroll import forward

class GradientFlow(NamedTuple):
  """Jacobian norms along one sequence and the seed's bound on them: ``norms[t, k] =
  ||dh_t/dh_k||_2`` and ``bound[t, k] = (||W_hh||_2 ||act'||)^(t-k)`` (``[T+1, T+1]``, 0 for
  ``k > t``), ``w_norm = ||W_hh||_2`` and ``act_slope = ||act'||``, the largest ``|act'(a_i)|``."""
  norms: jax.Array
  bound: jax.Array
  w_norm: jax.Array
  act_slope: jax.Array


def step_jacobians(cell: CellParams, hs_prev: jax.Array, xs: jax.Array,
                   model: ModelSpec) -> jax.Array:
  """``J_t = dh_t/dh_{t-1} [T, H, H]`` by ``jax.jacfwd`` of one cell's :func:`jaxrnn.cell.step`,
  along ``hs_prev = [h_0..h_{T-1}] [T, H]`` and ``xs = [x_1..x_T] [T, I]`` of one sequence."""
  def hidden(h_prev, x_t):
    return step(model, x_t @ cell.W_xh.T + cell.b_h, h_prev, cell.W_hh.T)
  return jax.vmap(jax.jacfwd(hidden))(hs_prev, xs)


def jacobian_norms(jacobians: jax.Array) -> jax.Array:
  """``N[t, k] = ||J_t J_{t-1} ... J_{k+1}||_2 [T+1, T+1]`` from ``J_1..J_T [T, H, H]``."""
  num_steps, hidden, _ = jacobians.shape
  eye = jnp.eye(hidden, dtype=jacobians.dtype)

  def from_k(k):
    def step(m, inputs):
      t, j_t = inputs
      m = jnp.where(t > k, j_t @ m, jnp.where(t == k, eye, 0 * eye))
      return m, jnp.linalg.norm(m, ord=2)
    m0 = jnp.where(k == 0, eye, 0 * eye)
    _, norms = jax.lax.scan(step, m0, (jnp.arange(1, num_steps + 1), jacobians))
    return jnp.concatenate([jnp.linalg.norm(m0, ord=2)[None], norms])   # [T+1] over t

  return jax.vmap(from_k, out_axes=1)(jnp.arange(num_steps + 1))        # [t, k]


def gradient_flow(params: RNNParams, xs: jax.Array, h0: jax.Array | None = None, *,
                  layer: int = 0, direction: int = 0,
                  model: ModelSpec = ModelSpec()) -> GradientFlow:
  """``||dh_t/dh_k||`` for every pair of steps of one sequence in one layer, and its bound.

  The Jacobians are those of cell ``params.layers[layer][direction]`` along the
  inputs it received from one sequence ``xs [T, I]`` (``h0 [L*D, H]``, zeros
  when ``None``), steps counted in the order the cell reads them. Returns a
  :class:`GradientFlow`; ``norms <= bound`` entrywise (up to rounding).

  Example:
    >>> flow = jaxrnn.gradient_flow(params, xs[:, 0])      # one sequence [T, I]
    >>> flow.norms.shape                                    # ||dh_t/dh_k|| for 0 <= k, t <= T
    (7, 7)
  """
  shape = checks.check_params(params)
  check_specs(shape, model)
  checks.check_array("xs", xs, "[T, I]", (None, shape.input_size), params.W_hy.dtype)
  if xs.shape[0] < 1:
    raise ValueError("xs must hold at least one step (T >= 1)")
  if h0 is not None:
    checks.check_shape("h0", h0, "[L*D, H]", (None, None))
    h0 = h0[:, None]
  h0 = checks.check_h0(h0, shape, 1, params.W_hy.dtype)                  # [L*D, 1, H]
  for name, value, count in (("layer", layer, shape.num_layers),
                             ("direction", direction, shape.num_directions)):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
      raise ValueError(f"{name} must be an int in [0, {count}), got {value!r}")
  trace = forward(params, xs[:, None], h0, None, model, PLAIN)
  inputs = time_order(trace.inputs[layer][:, 0], direction == 1)         # [T, I_l]
  hs = time_order(trace.states[layer][direction], direction == 1)        # [T, 1, H]
  cell = params.layers[layer][direction]
  h0_ld = h0[layer * shape.num_directions + direction]                  # [1, H]
  jacobians = step_jacobians(cell, previous_states(h0_ld, hs)[:, 0], inputs,
                             model)                                     # [T, H, H]
  act_slope = jnp.max(jnp.abs(activation_derivative(model, hs)))
  w_norm = jnp.linalg.norm(cell.W_hh, ord=2)
  steps = jnp.arange(xs.shape[0] + 1)
  gap = steps[:, None] - steps[None, :]                                 # t - k
  bound = jnp.where(gap >= 0, (w_norm * act_slope) ** jnp.maximum(gap, 0), 0)
  return GradientFlow(jacobian_norms(jacobians), bound, w_norm, act_slope)
