"""The Elman RNN cell: one step of the recurrence, as a pure function.

``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)`` and ``y_t = out_act(W_hy h_t + b_y)``.
All leading dimensions of ``x_t`` and ``h`` are batch dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn import checks
from jaxrnn.params import CellParams, RNNParams
from jaxrnn.spec import ModelSpec

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


def hidden_step(cell: CellParams, h_prev: jax.Array, x_t: jax.Array,
                activation: str = "tanh") -> jax.Array:
  """``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``; ``[..., H], [..., I] -> [..., H]``."""
  return ACTIVATIONS[activation](x_t @ cell.W_xh.T + h_prev @ cell.W_hh.T + cell.b_h)


def output_logits(params: RNNParams, h: jax.Array) -> jax.Array:
  """``z_t = W_hy h_t + b_y``, the output before ``out_act``; ``[..., D*H] -> [..., O]``."""
  return h @ params.W_hy.T + params.b_y


def stack_step(params: RNNParams, h: jax.Array, x_t: jax.Array,
               activation: str) -> tuple[jax.Array, jax.Array]:
  """One step through every layer of a unidirectional stack, unchecked.

  ``h^l_t = act(W_xh^l h^{l-1}_t + W_hh^l h^l_{t-1} + b_h^l)`` with ``h^{-1}_t = x_t``.

  Returns:
    ``(h_t [L, ..., H], h^{L-1}_t [..., H])``: every layer's new state and the top one.
  """
  states = []
  x = x_t
  for l, (cell,) in enumerate(params.layers):
    x = hidden_step(cell, h[l], x, activation)
    states.append(x)
  return jnp.stack(states), x


def rnn_cell(params: RNNParams, h_prev: jax.Array, x_t: jax.Array,
             model: ModelSpec = ModelSpec()) -> tuple[jax.Array, jax.Array]:
  """One time step of a unidirectional Elman RNN of ``L >= 1`` layers.

  ``h^l_t = act(W_xh^l h^{l-1}_t + W_hh^l h^l_{t-1} + b_h^l)`` (``h^{-1}_t = x_t``),
  ``y_t = out_act(W_hy h^{L-1}_t + b_y)``; for ``L = 1`` the seed's equations.

  The signature ``(h, x) -> (h, y)`` is ``lax.scan``'s, so the cell unrolls with
  ``functools.partial``. A bidirectional model has no step-by-step form (its
  reverse direction needs the future); use :func:`jaxrnn.unroll`.

  Args:
    params: a unidirectional :class:`jaxrnn.RNNParams`.
    h_prev: ``h_{t-1}`` of every layer, ``[L, ..., H]``.
    x_t: ``[..., I]``; its leading dimensions must match ``h_prev``'s after ``L``.
    model: the :class:`jaxrnn.ModelSpec` (its dropout rates are not used).

  Returns:
    ``(h_t [L, ..., H], y_t [..., O])``.

  Example:
    >>> import functools
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> xs = jnp.ones((4, 7, 3))                                  # [T, B, I]
    >>> h_T, ys = jax.lax.scan(functools.partial(jaxrnn.rnn_cell, params),
    ...                        jnp.zeros((1, 7, 5)), xs)           # ys [T, B, O]
  """
  shape = checks.check_params(params)
  checks.check_model(model)
  checks.check_unidirectional(shape, "rnn_cell", "a bidirectional model reads the whole "
                              "sequence (use jaxrnn.unroll)")
  checks.check_size("x_t", x_t, -1, shape.input_size, "the input size I of the params")
  checks.check_rank("h_prev", h_prev, jnp.ndim(x_t) + 1, "[L, ..., H]")
  checks.check_size("h_prev", h_prev, 0, shape.num_layers, "the number of layers L")
  checks.check_size("h_prev", h_prev, -1, shape.hidden_size, "the hidden size H")
  if jnp.shape(x_t)[:-1] != jnp.shape(h_prev)[1:-1]:
    raise ValueError(f"x_t batch shape {jnp.shape(x_t)[:-1]} does not match h_prev batch "
                     f"shape {jnp.shape(h_prev)[1:-1]}")
  h_t, top = stack_step(params, h_prev, x_t, model.activation)
  return h_t, OUTPUT_ACTIVATIONS[model.output_activation](output_logits(params, top))
