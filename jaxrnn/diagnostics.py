"""Vanishing and exploding gradients, measured.

BPTT multiplies one Jacobian per step,
``dh_t/dh_k = prod_{i=k+1}^t dh_i/dh_{i-1}`` with
``dh_i/dh_{i-1} = diag(act'(a_i + W_hh h_{i-1})) W_hh``, so

``||dh_t/dh_k|| <= ||W_hh||^(t-k) ||act'||^(t-k)``

(spectral norms; ``||act'||`` the largest ``|act'|`` met on the path, at most 1
for tanh and ReLU). When ``||W_hh|| ||act'|| < 1`` the gradient from step
``t`` back to step ``k`` vanishes geometrically; when the Jacobians stretch, it
explodes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.cell import activation_derivative, hidden_step
from jaxrnn.init import RNNParams
from jaxrnn.recurrence import input_projection, previous_states, scan_hidden
from jaxrnn.unroll import check_inputs


class GradientFlow(NamedTuple):
  """Jacobian norms along one sequence and the seed's bound on them.

  Attributes:
    norms: ``[T+1, T+1]``, ``norms[t, k] = ||dh_t/dh_k||_2`` (1 on the diagonal,
      0 for ``k > t``: ``h_t`` does not depend on later states).
    bound: ``[T+1, T+1]``, ``(||W_hh||_2 ||act'||)^(t-k)`` for ``k <= t``, 0 above.
    w_norm: ``||W_hh||_2``, the largest singular value.
    act_slope: ``||act'||``, the largest ``|act'(a_i)|`` over the sequence.
  """
  norms: jax.Array
  bound: jax.Array
  w_norm: jax.Array
  act_slope: jax.Array


def step_jacobians(params: RNNParams, hs_prev: jax.Array, xs: jax.Array,
                   activation: str = "tanh") -> jax.Array:
  """``J_t = dh_t/dh_{t-1}`` for ``t = 1..T`` by ``jax.jacfwd`` of the cell; ``[T, H, H]``.

  Args:
    params: :class:`RNNParams`.
    hs_prev: ``[h_0, ..., h_{T-1}]`` of one sequence, ``[T, H]``.
    xs: ``[x_1, ..., x_T]``, ``[T, I]``.
    activation: ``"tanh"`` or ``"relu"``.
  """
  jac = jax.jacfwd(functools.partial(hidden_step, params, activation=activation), argnums=0)
  return jax.vmap(jac)(hs_prev, xs)


def jacobian_norms(jacobians: jax.Array) -> jax.Array:
  """``N[t, k] = ||J_t J_{t-1} ... J_{k+1}||_2`` for all ``0 <= k <= t <= T``; ``[T+1, T+1]``.

  Args:
    jacobians: ``[T, H, H]`` step Jacobians ``J_1..J_T`` (:func:`step_jacobians`).
  """
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


def gradient_flow(params: RNNParams, xs: jax.Array, h0: jax.Array | None = None,
                  activation: str = "tanh") -> GradientFlow:
  """``||dh_t/dh_k||`` for every pair of steps of one sequence, and its bound.

  Args:
    params: :class:`RNNParams`.
    xs: one sequence, ``[T, I]``.
    h0: ``[H]``, zeros when ``None``.
    activation: ``"tanh"`` or ``"relu"``.

  Returns:
    :class:`GradientFlow`; ``norms <= bound`` holds entrywise (up to rounding).

  Example:
    >>> flow = jaxrnn.gradient_flow(params, xs)      # xs [T, I]
    >>> flow.norms[-1]                               # ||dh_T/dh_k|| for k = 0..T
  """
  _checks.check_rank("xs", xs, 2, "[T, I]")
  if h0 is not None:
    _checks.check_rank("h0", h0, 1, "[H]")
    h0 = h0[None]
  h0 = check_inputs(params, xs[:, None], h0, None, activation).h0[0]    # [H]
  pre = input_projection(params.W_xh, params.b_h, xs[:, None])          # [T, 1, H]
  hs = scan_hidden(pre, params.W_hh, h0[None], None, activation)        # [T, 1, H]
  jacobians = step_jacobians(params, previous_states(h0[None], hs)[:, 0], xs,
                             activation)                                # [T, H, H]
  act_slope = jnp.max(jnp.abs(activation_derivative(activation, hs)))
  w_norm = jnp.linalg.norm(params.W_hh, ord=2)
  steps = jnp.arange(xs.shape[0] + 1)
  gap = steps[:, None] - steps[None, :]                                 # t - k
  bound = jnp.where(gap >= 0, (w_norm * act_slope) ** jnp.maximum(gap, 0), 0)
  return GradientFlow(jacobian_norms(jacobians), bound, w_norm, act_slope)
