"""The hidden-state chain ``h_t = act(a_t + W_hh h_{t-1})``, forward, with masks.

``a_t = W_xh x_t + b_h`` does not depend on ``h``, so it is computed for all
``t`` at once (one ``[T*B, I] x [I, H]`` matmul, :func:`input_projection`) and
only the truly sequential part runs inside ``lax.scan``.

Variable-length sequences carry a mask ``m_t`` (1 inside the sequence, 0
after its end); a masked step freezes the state:
``h_t = m_t act(a_t + W_hh h_{t-1}) + (1 - m_t) h_{t-1}``.

:func:`fused_layer` (the training path) runs a layer and its hand-derived
backward, the chain either with ``lax.scan`` or with the persistent Pallas
kernels of :mod:`jaxrnn.kernels`, chosen in one place (:func:`chain_forward`,
:func:`chain_backward`) by ``ComputeSpec.recurrence`` and the platform.
``precision`` (``"highest"``, ``"default"`` or ``None`` for JAX's current
default) applies to every matmul here, the backward pass included.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

from jaxrnn import kernels
from jaxrnn.cell import ACTIVATIONS, activation_derivative


def precision_scope(precision: str | None):
  """``jax.default_matmul_precision(precision)`` for the code traced inside; no-op for ``None``."""
  return contextlib.nullcontext() if precision is None else jax.default_matmul_precision(precision)


def input_projection(W_xh: jax.Array, b_h: jax.Array, xs: jax.Array) -> jax.Array:
  """``a_t = W_xh x_t + b_h`` for every step at once; ``[T, B, I] -> [T, B, H]``."""
  return xs @ W_xh.T + b_h


def scan_hidden(pre: jax.Array, W_hh: jax.Array, h0: jax.Array, mask: jax.Array | None,
                activation: str, scan_unroll: int = 1, precision: str | None = None,
                bias: jax.Array | None = None) -> jax.Array:
  """Runs ``h_t = act(a_t + W_hh h_{t-1})`` for ``t = 1..T`` with ``lax.scan``.

  Args:
    pre: ``a_t = W_xh x_t + b_h`` for all steps, ``[T, B, H]`` (without
      ``b_h`` when ``bias`` is given).
    W_hh: ``[H, H]``.
    h0: ``[B, H]``.
    mask: ``[T, B]`` of 0/1, or ``None`` (every step live). A masked step keeps
      ``h_t = h_{t-1}``.
    activation: a key of :data:`jaxrnn.cell.ACTIVATIONS`.
    scan_unroll: ``unroll`` argument of ``lax.scan`` (steps per loop iteration).
    precision: of ``h @ W_hh^T``; ``None``: JAX's current default.
    bias: ``b_h``, ``[H]``, added to ``a_t`` inside each step (in the same
      order, so the numbers are the same), which saves a pass over
      ``[T, B, H]``; ``None``: ``pre`` holds it.

  Returns:
    ``hs = [h_1, ..., h_T]``, ``[T, B, H]``.
  """
  with precision_scope(precision):
    return _scan_hidden(pre, W_hh, h0, mask, activation, scan_unroll, bias)


def _scan_hidden(pre, W_hh, h0, mask, activation, scan_unroll, bias):
  act = ACTIVATIONS[activation]
  W_hh_T = W_hh.T
  with_bias = (lambda a_t: a_t) if bias is None else (lambda a_t: a_t + bias)

  if mask is None:
    def step(h, a_t):
      h = act(with_bias(a_t) + h @ W_hh_T)
      return h, h
    _, hs = jax.lax.scan(step, h0, pre, unroll=scan_unroll)
    return hs

  def masked_step(h, inputs):
    a_t, m_t = inputs
    h = jnp.where(m_t[:, None] > 0, act(with_bias(a_t) + h @ W_hh_T), h)
    return h, h
  _, hs = jax.lax.scan(masked_step, h0, (pre, mask), unroll=scan_unroll)
  return hs


def backward_hidden(W_hh: jax.Array, hs: jax.Array, h0: jax.Array, g: jax.Array,
                    mask: jax.Array | None, activation: str, scan_unroll: int = 1,
                    precision: str | None = None) -> tuple[jax.Array, jax.Array]:
  """The hand-derived backward recursion of the chain, as a reverse ``lax.scan``.

  With ``g_t = dL_t/dh_t`` (what reaches ``h_t`` from the output at step ``t``)
  and ``delta_t = dL/da_t`` (the gradient at the pre-activation),

  ``delta_t = (g_t + W_hh^T delta_{t+1}) * act'(a_t + W_hh h_{t-1})``,
  ``delta_{T+1} = 0``, and ``dL/dh_0 = W_hh^T delta_1``.

  This is the seed's ``dh_t/dh_k = prod_{i=k+1}^t W_hh^T diag(act'(.))``
  applied right to left, one factor per step. ``act'`` is read off the stored
  ``h_t`` (:func:`jaxrnn.cell.activation_derivative`). With a mask, a frozen
  step passes the whole gradient of ``h_t`` on to ``h_{t-1}``: writing
  ``e_t = g_t + c_t`` for the full ``dL/dh_t`` (``c_t`` what comes from later
  steps), ``delta_t = m_t e_t act'_t`` and
  ``c_{t-1} = W_hh^T delta_t + (1 - m_t) e_t``.

  The scan carries only ``c_t`` (``[B, H]``); the weight gradients are left to
  one large matmul each over the returned ``delta``.

  Args:
    W_hh: ``[H, H]``.
    hs: the forward states ``h_1..h_T``, ``[T, B, H]``.
    h0: ``[B, H]`` (unused by the recursion; sets the dtype of ``dL/dh_0``).
    g: ``dL_t/dh_t``, ``[T, B, H]``.
    mask: ``[T, B]`` of 0/1, or ``None``.
    activation: ``"tanh"`` or ``"relu"``.
    scan_unroll: ``unroll`` argument of ``lax.scan``.
    precision: of ``delta_t @ W_hh``; ``None``: JAX's current default.

  Returns:
    ``(delta [T, B, H], dL/dh_0 [B, H])``.
  """
  with precision_scope(precision):
    return _backward_hidden(W_hh, hs, h0, g, mask, activation, scan_unroll)


def _backward_hidden(W_hh, hs, h0, g, mask, activation, scan_unroll):
  c_T = jnp.zeros_like(h0)

  if mask is None:
    def step(c, inputs):
      g_t, h_t = inputs
      delta_t = (g_t + c) * activation_derivative(activation, h_t)
      return delta_t @ W_hh, delta_t
    dh0, delta = jax.lax.scan(step, c_T, (g, hs), reverse=True, unroll=scan_unroll)
    return delta, dh0

  def masked_step(c, inputs):
    g_t, h_t, m_t = inputs
    e_t = g_t + c
    live = m_t[:, None] > 0
    delta_t = jnp.where(live, e_t * activation_derivative(activation, h_t), 0)
    return delta_t @ W_hh + jnp.where(live, 0, e_t), delta_t
  dh0, delta = jax.lax.scan(masked_step, c_T, (g, hs, mask), reverse=True, unroll=scan_unroll)
  return delta, dh0


def previous_states(h0: jax.Array, hs: jax.Array) -> jax.Array:
  """``[h_0, ..., h_{T-1}]`` from ``h0 [B, H]`` and ``hs = [h_1..h_T]``; ``[T, B, H]``."""
  return jnp.concatenate([h0[None], hs], axis=0)[:len(hs)]


def chain_forward(pre: jax.Array, W_hh: jax.Array, h0: jax.Array, mask: jax.Array | None,
                  activation: str, scan_unroll: int = 1, precision: str | None = None,
                  recurrence: str = "auto", bias: jax.Array | None = None) -> jax.Array:
  """:func:`scan_hidden`, or :func:`jaxrnn.kernels.forward_kernel` where ``recurrence`` picks it.

  ``recurrence``: ``"scan"``, ``"kernel"`` or ``"auto"`` (the kernel on a GPU
  when ``W_hh`` fits on chip, :func:`jaxrnn.kernels.use_kernel`). ``bias``:
  as :func:`scan_hidden` (the kernel path adds it to ``pre`` first).
  """
  if kernels.use_kernel(recurrence, pre.dtype, W_hh.shape[0], precision):
    pre = pre if bias is None else pre + bias
    return kernels.forward_kernel(pre, W_hh, h0, mask, activation, precision=precision)
  return scan_hidden(pre, W_hh, h0, mask, activation, scan_unroll, precision, bias)


def chain_backward(W_hh: jax.Array, hs: jax.Array, h0: jax.Array, g: jax.Array,
                   mask: jax.Array | None, activation: str, scan_unroll: int = 1,
                   precision: str | None = None,
                   recurrence: str = "auto") -> tuple[jax.Array, jax.Array]:
  """:func:`backward_hidden`, or :func:`jaxrnn.kernels.backward_kernel` (as :func:`chain_forward`)."""
  if kernels.use_kernel(recurrence, hs.dtype, W_hh.shape[0], precision):
    return kernels.backward_kernel(W_hh, hs, h0, g, mask, activation, precision=precision)
  return backward_hidden(W_hh, hs, h0, g, mask, activation, scan_unroll, precision)


def weight_gradients(delta: jax.Array, xs: jax.Array, hs: jax.Array,
                     h0: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(dW_xh, db_h, dW_hh)`` of one layer from ``delta_t = dL/da_t``, one matmul each.

  ``dW_xh = sum_t delta_t x_t^T``, ``db_h = sum_t delta_t`` and
  ``dW_hh = sum_t delta_t h_{t-1}^T`` (``h_{t-1}`` from
  :func:`previous_states`), each summed over every step and sequence at once.
  Both products contract over the ``T*B`` rows, so both read ``delta^T``
  (``[H, T*B]``): it is laid out once, behind an optimisation barrier, and
  shared. Without the barrier XLA's CPU backend runs the first as a
  transposed-operand dot and transposes ``delta`` again for the second (and
  copies two slices of ``[T*B, H]`` for the shifted product): the medium
  benchmark's per-device loss and gradient took 36.0 ms against 32.8 ms
  with the shared layout (one core, ``benchmarks/README.md``).

  Args:
    delta: ``[T, B, H]``.
    xs: the layer's inputs, ``[T, B, I]``.
    hs: its states ``h_1..h_T``, ``[T, B, H]``.
    h0: ``[B, H]``.

  Returns:
    ``([H, I], [H], [H, H])``.
  """
  hidden = delta.shape[-1]
  delta_T = jax.lax.optimization_barrier(delta.reshape(-1, hidden).T)     # [H, T*B]
  dW_xh = delta_T @ xs.reshape(-1, xs.shape[-1])
  dW_hh = delta_T @ previous_states(h0, hs).reshape(-1, hidden)
  return dW_xh, delta.sum((0, 1)), dW_hh


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def fused_layer(xs: jax.Array, W_xh: jax.Array, b_h: jax.Array, W_hh: jax.Array, h0: jax.Array,
                mask: jax.Array | None, activation: str, scan_unroll: int = 1,
                precision: str | None = None, recurrence: str = "auto") -> jax.Array:
  """One layer's ``h_t = act(W_xh x_t + b_h + W_hh h_{t-1})`` whose gradient is the hand-derived BPTT.

  The forward pass is ``W_xh x_t`` for all steps at once, then
  :func:`chain_forward` with ``b_h`` added inside each step (``lax.scan`` or
  a persistent Pallas kernel, by ``recurrence``), and saves
  only ``hs`` (no per-step intermediates). The backward pass runs the
  ``delta`` recursion (:func:`chain_backward`), then forms the weight
  gradients with one matmul each (:func:`weight_gradients`) and
  ``dL/dx_t = W_xh^T delta_t`` (what a lower layer receives), all at
  ``precision`` (the backward is traced during differentiation, outside any
  caller's precision scope, so it sets its own).

  Args:
    xs: the layer's inputs, ``[T, B, I]``.
    W_xh: ``[H, I]``; b_h: ``[H]``; W_hh: ``[H, H]``; h0: ``[B, H]``.
    mask, activation, scan_unroll, precision: as :func:`scan_hidden`.
    recurrence: ``"auto"``, ``"scan"`` or ``"kernel"`` (:func:`chain_forward`).

  Returns:
    ``hs = [h_1, ..., h_T]``, ``[T, B, H]``.
  """
  return _fused_fwd(xs, W_xh, b_h, W_hh, h0, mask, activation, scan_unroll, precision,
                    recurrence)[0]


def _fused_fwd(xs, W_xh, b_h, W_hh, h0, mask, activation, scan_unroll, precision, recurrence):
  with precision_scope(precision):
    projected = xs @ W_xh.T                                              # [T, B, H]
  hs = chain_forward(projected, W_hh, h0, mask, activation, scan_unroll, precision, recurrence,
                     b_h)
  return hs, (xs, W_xh, W_hh, hs, h0, mask)


def _fused_bwd(activation, scan_unroll, precision, recurrence, residuals, g):
  xs, W_xh, W_hh, hs, h0, mask = residuals
  delta, dh0 = chain_backward(W_hh, hs, h0, g, mask, activation, scan_unroll, precision,
                              recurrence)                                 # [T, B, H], [B, H]
  with precision_scope(precision):
    dW_xh, db_h, dW_hh = weight_gradients(delta, xs, hs, h0)
    dxs = delta @ W_xh                                                   # [T, B, I]
  dmask = None if mask is None else jnp.zeros_like(mask)
  return dxs, dW_xh, db_h, dW_hh, dh0, dmask


fused_layer.defvjp(_fused_fwd, _fused_bwd)
