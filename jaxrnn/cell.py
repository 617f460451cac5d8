"""The Elman RNN cell: one step of the recurrence, as a pure function.

``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)`` and ``y_t = out_act(W_hy h_t + b_y)``.
All leading dimensions of ``x_t`` and ``h_prev`` are batch dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.init import RNNParams, check_params

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
}

OUTPUT_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda z: z,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": lambda z: jax.nn.softmax(z, axis=-1),
}


def activation_derivative(activation: str, h: jax.Array) -> jax.Array:
  """``act'(z)`` written in terms of the output ``h = act(z)``.

  ``tanh' = 1 - h**2`` and ``relu' = [h > 0]``, so the backward pass needs only
  the stored hidden states, never the pre-activations.
  """
  if activation == "tanh":
    return 1 - h * h
  return (h > 0).astype(h.dtype)


def hidden_step(params: RNNParams, h_prev: jax.Array, x_t: jax.Array,
                activation: str = "tanh") -> jax.Array:
  """``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``; ``[..., I], [..., H] -> [..., H]``."""
  return ACTIVATIONS[activation](x_t @ params.W_xh.T + h_prev @ params.W_hh.T + params.b_h)


def output_logits(params: RNNParams, h: jax.Array) -> jax.Array:
  """``z_t = W_hy h_t + b_y``, the output before ``out_act``; ``[..., H] -> [..., O]``."""
  return h @ params.W_hy.T + params.b_y


def rnn_cell(params: RNNParams, h_prev: jax.Array, x_t: jax.Array, activation: str = "tanh",
             output_activation: str = "identity") -> tuple[jax.Array, jax.Array]:
  """One step of the Elman RNN.

  ``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``, ``y_t = out_act(W_hy h_t + b_y)``.

  The signature ``(h, x) -> (h, y)`` is ``lax.scan``'s, so the cell unrolls with
  ``functools.partial``.

  Args:
    params: :class:`RNNParams`.
    h_prev: ``h_{t-1}``, ``[..., H]``.
    x_t: ``x_t``, ``[..., I]``; leading dimensions must match ``h_prev``'s.
    activation: ``"tanh"`` or ``"relu"``.
    output_activation: ``"identity"``, ``"sigmoid"``, ``"tanh"`` or ``"softmax"``.

  Returns:
    ``(h_t [..., H], y_t [..., O])``.

  Example:
    >>> import functools
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> xs = jnp.ones((4, 7, 3))                                  # [T, B, I]
    >>> h_T, ys = jax.lax.scan(functools.partial(jaxrnn.rnn_cell, params),
    ...                        jnp.zeros((7, 5)), xs)              # ys [T, B, O]
  """
  _, hidden, _ = check_params(params)
  _checks.check_choice("activation", activation, ACTIVATIONS)
  _checks.check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
  _checks.check_size("x_t", x_t, -1, params.W_xh.shape[1], "the input size I of params.W_xh")
  _checks.check_size("h_prev", h_prev, -1, hidden, "the hidden size H of params.W_hh")
  if jnp.shape(x_t)[:-1] != jnp.shape(h_prev)[:-1]:
    raise ValueError(f"x_t batch shape {jnp.shape(x_t)[:-1]} does not match h_prev batch "
                     f"shape {jnp.shape(h_prev)[:-1]}")
  h_t = hidden_step(params, h_prev, x_t, activation)
  return h_t, OUTPUT_ACTIVATIONS[output_activation](output_logits(params, h_t))
