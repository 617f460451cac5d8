"""Backpropagation through time, derived and written by hand.

No ``jax.grad``/``jax.vjp`` is used here: every gradient is one of the seed's
equations, in the order the chain rule applies them. It is the oracle the tests
hold ``jax.grad`` to, and (through :func:`jaxrnn.recurrence.fused_hidden`) the
backward pass the library trains with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn.cell import OUTPUT_ACTIVATIONS, output_logits
from jaxrnn.init import RNNParams
from jaxrnn.losses import check_loss_inputs
from jaxrnn.recurrence import backward_hidden, input_projection, previous_states, scan_hidden


def output_delta(z: jax.Array, targets: jax.Array, loss: str,
                 output_activation: str) -> jax.Array:
  """``dL_t/dz_t`` for ``z_t = W_hy h_t + b_y``, unweighted; ``[T, B, O]``.

  * cross-entropy (``identity`` or ``softmax`` output): ``softmax(z_t) - onehot(target_t)``.
  * squared error, ``g = dL_t/dy_t = 2 (y_t - target_t)``, times ``out_act'``:
    identity ``g``; sigmoid ``g y (1 - y)``; tanh ``g (1 - y^2)``;
    softmax ``y * (g - <g, y>)`` (the softmax Jacobian ``diag(y) - y y^T``).
  """
  if loss == "cross_entropy":
    return jax.nn.softmax(z, axis=-1) - jax.nn.one_hot(targets, z.shape[-1], dtype=z.dtype)
  y = OUTPUT_ACTIVATIONS[output_activation](z)
  g = 2 * (y - targets)
  if output_activation == "sigmoid":
    return g * y * (1 - y)
  if output_activation == "tanh":
    return g * (1 - y * y)
  if output_activation == "softmax":
    return y * (g - jnp.sum(g * y, axis=-1, keepdims=True))
  return g


def bptt(params: RNNParams, xs: jax.Array, targets: jax.Array, loss: str = "cross_entropy",
         lengths: jax.Array | None = None, h0: jax.Array | None = None,
         activation: str = "tanh", output_activation: str = "identity",
         reduction: str = "sum",
         target_mask: jax.Array | None = None) -> tuple[RNNParams, jax.Array]:
  """Hand-derived gradient of :func:`jaxrnn.sequence_loss` and ``dL/dh_0``.

  Forward: ``a_t = W_xh x_t + b_h``, ``h_t = act(a_t + W_hh h_{t-1})``,
  ``z_t = W_hy h_t + b_y``, ``L = sum_t w_t L_t`` (``w_t`` the length mask
  times ``target_mask``, over their count for ``reduction="mean"``). Backward, line for line below:

  1. ``dz_t = w_t dL_t/dz_t``                              (:func:`output_delta`)
  2. ``dL/dW_hy = sum_t dz_t h_t^T``, ``dL/db_y = sum_t dz_t``
  3. ``g_t = dL_t/dh_t = W_hy^T dz_t``
  4. ``delta_t = (g_t + W_hh^T delta_{t+1}) * act'(a_t + W_hh h_{t-1})``,
     a reverse ``lax.scan`` (:func:`jaxrnn.recurrence.backward_hidden`);
     ``dL/dh_0 = W_hh^T delta_1``
  5. ``dL/dW_hh = sum_t delta_t h_{t-1}^T``, ``dL/dW_xh = sum_t delta_t x_t^T``,
     ``dL/db_h = sum_t delta_t``

  Step 5 is the seed's
  ``dL/dW_hh = sum_t sum_{k<=t} dL_t/dh_t dh_t/dh_k dh_k/dW_hh``: ``delta_k``
  already holds ``sum_{t>=k} dL_t/dh_t dh_t/dh_k`` (times ``act'`` at ``k``).

  Args:
    Same as :func:`jaxrnn.sequence_loss` (``xs [T, B, I]``, ``targets``,
    ``loss``, ``lengths [B]``, ``h0 [B, H]``, ``activation``,
    ``output_activation``, ``reduction``, ``target_mask``), with the same
    meaning.

  Returns:
    ``(grads, dh0)``: ``grads`` an :class:`RNNParams` of ``dL/dparams``
    (shaped like ``params``), ``dh0 = dL/dh_0`` ``[B, H]``.
  """
  (h0, mask), weights = check_loss_inputs(params, xs, targets, loss, lengths, h0, activation,
                                          output_activation, reduction, target_mask)  # w_t [T, B]
  pre = input_projection(params.W_xh, params.b_h, xs)                        # a_t  [T, B, H]
  hs = scan_hidden(pre, params.W_hh, h0, mask, activation)                   # h_t  [T, B, H]
  z = output_logits(params, hs)                                              # z_t  [T, B, O]

  dz = weights[..., None] * output_delta(z, targets, loss, output_activation)  # [T, B, O]
  dW_hy = jnp.einsum("tbo,tbh->oh", dz, hs)
  db_y = jnp.sum(dz, axis=(0, 1))
  g = dz @ params.W_hy                                                       # [T, B, H]
  delta, dh0 = backward_hidden(params.W_hh, hs, h0, g, mask, activation)     # [T, B, H]
  dW_hh = jnp.einsum("tbh,tbk->hk", delta, previous_states(h0, hs))
  dW_xh = jnp.einsum("tbh,tbi->hi", delta, xs)
  db_h = jnp.sum(delta, axis=(0, 1))
  return RNNParams(W_xh=dW_xh, W_hh=dW_hh, W_hy=dW_hy, b_h=db_h, b_y=db_y), dh0
