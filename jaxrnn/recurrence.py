"""The hidden-state chain ``h_t = act(a_t + W_hh h_{t-1})`` of one layer, forward and backward.

``W_xh x_t`` is one ``[T*B, I] x [I, H]`` matmul for all steps; only the chain
runs step by step, in ``lax.scan`` or in the Pallas kernels of
:mod:`jaxrnn.kernels` (``ComputeSpec.recurrence`` picks). A step past a
sequence's end (mask ``m_t = 0``) freezes the state,
``h_t = m_t act(a_t + W_hh h_{t-1}) + (1 - m_t) h_{t-1}``. :func:`fused_layer`
is a layer whose gradient is the hand-derived backward recursion; its states
carry the :data:`STATES` name, which the chunked loss
(:func:`jaxrnn.losses.chunked_loss`) keeps while recomputing the rest.
"""

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxrnn import kernels
from jaxrnn.cell import activation_derivative, step
from jaxrnn.pytrees import CellParams
from jaxrnn.spec import ComputeSpec, ModelSpec, precision_scope

STATES = "states"
"""The ``jax.ad_checkpoint.checkpoint_name`` of the states :func:`fused_layer` stores."""


def scan_hidden(pre: jax.Array, W_hh: jax.Array, h0: jax.Array, mask: jax.Array | None,
                model: ModelSpec, compute: ComputeSpec, bias: jax.Array | None = None) -> jax.Array:
  """``hs = [h_1, ..., h_T] [T, B, H]`` of ``h_t = act(a_t + W_hh h_{t-1})`` by ``lax.scan``.

  Args:
    pre: ``a_t [T, B, H]``, without ``b_h`` when ``bias`` is given.
    W_hh: ``[H, H]``; h0: ``[B, H]``.
    mask: ``[T, B]`` of 0/1, or ``None`` (every step live).
    model, compute: the activation; ``scan_unroll`` and ``precision``.
    bias: ``b_h [H]``, added inside each step (saves a pass over ``[T, B, H]``).
  """
  W_hh_T = W_hh.T

  def body(h, inputs):
    a_t, m_t = inputs                                                    # [B, H], [B]
    a_t = a_t if bias is None else a_t + bias
    h = step(model, a_t, h, W_hh_T, None if m_t is None else m_t[:, None] > 0)
    return h, h

  with precision_scope(compute):
    return jax.lax.scan(body, h0, (pre, mask), unroll=compute.scan_unroll)[1]


def backward_hidden(W_hh: jax.Array, hs: jax.Array, g: jax.Array, mask: jax.Array | None,
                    model: ModelSpec, compute: ComputeSpec) -> tuple[jax.Array, jax.Array]:
  """The hand-derived backward recursion of the chain, as a reverse ``lax.scan``.

  With ``g_t = dL_t/dh_t`` (what reaches ``h_t`` from the output at step ``t``)
  and ``delta_t = dL/da_t`` (the gradient at the pre-activation),

  ``delta_t = (g_t + W_hh^T delta_{t+1}) * act'(a_t + W_hh h_{t-1})``,
  ``delta_{T+1} = 0``, and ``dL/dh_0 = W_hh^T delta_1``.

  This is the seed's ``dh_t/dh_k = prod_{i=k+1}^t W_hh^T diag(act'(.))``
  applied right to left, ``act'`` read off the stored ``h_t``. A frozen step
  passes the whole gradient on: with ``e_t = g_t + c_t`` the full ``dL/dh_t``,
  ``delta_t = m_t e_t act'_t`` and ``c_{t-1} = W_hh^T delta_t + (1 - m_t) e_t``.

  Args:
    W_hh: ``[H, H]``; hs: ``h_1..h_T [T, B, H]``; g: ``dL_t/dh_t [T, B, H]``.
    mask, model, compute: as :func:`scan_hidden`'s.

  Returns:
    ``(delta [T, B, H], dL/dh_0 [B, H])``.
  """
  def body(c, inputs):
    g_t, h_t, m_t = inputs
    e_t = g_t + c                                                        # dL/dh_t
    delta_t = e_t * activation_derivative(model, h_t)
    if m_t is None:
      return delta_t @ W_hh, delta_t
    live = m_t[:, None] > 0
    delta_t = jnp.where(live, delta_t, 0)
    return delta_t @ W_hh + jnp.where(live, 0, e_t), delta_t

  with precision_scope(compute):
    dh0, delta = jax.lax.scan(body, jnp.zeros(hs.shape[1:], hs.dtype), (g, hs, mask),
                              reverse=True, unroll=compute.scan_unroll)
  return delta, dh0


def previous_states(h0: jax.Array, hs: jax.Array) -> jax.Array:
  """``[h_0, ..., h_{T-1}]`` from ``h0 [B, H]`` and ``hs = [h_1..h_T]``; ``[T, B, H]``."""
  return jnp.concatenate([h0[None], hs], axis=0)[:len(hs)]


def chain_forward(pre: jax.Array, W_hh: jax.Array, h0: jax.Array, mask: jax.Array | None,
                  model: ModelSpec, compute: ComputeSpec,
                  bias: jax.Array | None = None) -> jax.Array:
  """:func:`scan_hidden`, or :func:`jaxrnn.kernels.forward_kernel` where ``compute.recurrence``
  picks it (:func:`jaxrnn.kernels.use_kernel`; the kernel path adds ``bias`` to ``pre`` first)."""
  if kernels.use_kernel(compute, pre.dtype, W_hh.shape[0]):
    pre = pre if bias is None else pre + bias
    return kernels.forward_kernel(pre, W_hh, h0, mask, model, compute)
  return scan_hidden(pre, W_hh, h0, mask, model, compute, bias)


def chain_backward(W_hh: jax.Array, hs: jax.Array, g: jax.Array, mask: jax.Array | None,
                   model: ModelSpec, compute: ComputeSpec) -> tuple[jax.Array, jax.Array]:
  """:func:`backward_hidden`, or :func:`jaxrnn.kernels.backward_kernel` (as :func:`chain_forward`)."""
  if kernels.use_kernel(compute, hs.dtype, W_hh.shape[0]):
    return kernels.backward_kernel(W_hh, hs, g, mask, model, compute)
  return backward_hidden(W_hh, hs, g, mask, model, compute)


def weight_gradients(delta: jax.Array, xs: jax.Array, hs: jax.Array,
                     h0: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(dW_xh, db_h, dW_hh)`` of one layer from ``delta_t = dL/da_t``, one matmul each.

  ``dW_xh = sum_t delta_t x_t^T [H, I]``, ``db_h = sum_t delta_t [H]``,
  ``dW_hh = sum_t delta_t h_{t-1}^T [H, H]``, over all steps and sequences at
  once, from ``delta, xs, hs = h_1..h_T [T, B, .]`` and ``h0 [B, H]``. Both
  products read one ``[H, T*B]`` layout of ``delta^T``, kept behind an
  optimisation barrier (else XLA:CPU transposes ``delta`` twice).
  """
  hidden = delta.shape[-1]
  delta_T = jax.lax.optimization_barrier(delta.reshape(-1, hidden).T)     # [H, T*B]
  dW_xh = delta_T @ xs.reshape(-1, xs.shape[-1])
  dW_hh = delta_T @ previous_states(h0, hs).reshape(-1, hidden)
  return dW_xh, delta.sum((0, 1)), dW_hh


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fused_layer(xs: jax.Array, cell: CellParams, h0: jax.Array, mask: jax.Array | None,
                model: ModelSpec, compute: ComputeSpec) -> jax.Array:
  """One layer's ``h_t = act(W_xh x_t + b_h + W_hh h_{t-1})`` whose gradient is the hand-derived BPTT.

  The forward pass saves only ``hs = [h_1..h_T] [T, B, H]`` (named :data:`STATES`);
  the backward pass runs the ``delta`` recursion (:func:`chain_backward`), then
  the weight gradients (:func:`weight_gradients`) and ``dL/dx_t = W_xh^T delta_t``.
  ``xs [T, B, I]``, ``h0 [B, H]``; the rest as :func:`scan_hidden`'s.
  """
  return _fused_fwd(xs, cell, h0, mask, model, compute)[0]


def _fused_fwd(xs, cell, h0, mask, model, compute):
  with precision_scope(compute):
    projected = xs @ cell.W_xh.T                                         # [T, B, H]
  hs = checkpoint_name(chain_forward(projected, cell.W_hh, h0, mask, model, compute, cell.b_h),
                       STATES)
  return hs, (xs, cell, hs, h0, mask)


def _fused_bwd(model, compute, residuals, g):
  xs, cell, hs, h0, mask = residuals
  delta, dh0 = chain_backward(cell.W_hh, hs, g, mask, model, compute)     # [T, B, H], [B, H]
  with precision_scope(compute):
    dW_xh, db_h, dW_hh = weight_gradients(delta, xs, hs, h0)
    dxs = delta @ cell.W_xh                                              # [T, B, I]
  dmask = None if mask is None else jnp.zeros_like(mask)
  return dxs, CellParams(dW_xh, dW_hh, db_h), dh0.astype(h0.dtype), dmask


fused_layer.defvjp(_fused_fwd, _fused_bwd)
