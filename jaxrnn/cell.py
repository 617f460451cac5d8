"""The Elman RNN cell: one step of the recurrence and the read-out, as pure functions.

``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)`` and ``y_t = out_act(W_hy h_t + b_y)``.
Every path of the library (``lax.scan``, the Pallas kernels, training,
evaluation, inference, generation, the diagnostics) computes a step with
:func:`step` and a read-out with :func:`readout`. All leading dimensions are
batch dimensions.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn import checks
from jaxrnn.pytrees import RNNParams
from jaxrnn.spec import ModelSpec, check_specs

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"tanh": jnp.tanh, "relu": jax.nn.relu}
OUTPUT_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda z: z, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh,
    "softmax": lambda z: jax.nn.softmax(z, axis=-1)}


def activation_derivative(model: ModelSpec, h: jax.Array) -> jax.Array:
  """``act'(z)`` written in terms of the output ``h = act(z)``.

  ``tanh' = 1 - h**2`` and ``relu' = [h > 0]``, so the backward pass needs only
  the stored hidden states, never the pre-activations.
  """
  if model.activation == "tanh":
    return 1 - h * h
  return (h > 0).astype(h.dtype)


def step(model: ModelSpec, a_t: jax.Array, h_prev: jax.Array, W_hh_T: jax.Array,
         live: jax.Array | None = None, dot: Callable = jnp.matmul) -> jax.Array:
  """``h_t = act(a_t + W_hh h_{t-1}) [..., H]`` from ``a_t = W_xh x_t + b_h`` and ``h_prev``
  (``[..., H]``) and ``W_hh_T = W_hh^T``; where ``live`` (``[..., 1]`` booleans) is false the
  state is frozen, ``h_t = h_{t-1}``. ``dot``: the matmul (the Pallas kernels pass theirs)."""
  h = ACTIVATIONS[model.activation](a_t + dot(h_prev, W_hh_T))
  return h if live is None else jnp.where(live, h, h_prev)


def output_activation(model: ModelSpec, z: jax.Array) -> jax.Array:
  """``y_t = out_act(z_t)``, ``out_act`` from :data:`OUTPUT_ACTIVATIONS`; ``[..., O]``."""
  return OUTPUT_ACTIVATIONS[model.output_activation](z)


def output_logits(params: RNNParams, h: jax.Array) -> jax.Array:
  """``z_t = W_hy h_t + b_y``, the output before ``out_act``; ``[..., D*H] -> [..., O]``."""
  return h @ params.W_hy.T + params.b_y


def readout(params: RNNParams, h: jax.Array, model: ModelSpec,
            live: jax.Array | None = None) -> jax.Array:
  """``y_t = out_act(W_hy h_t + b_y)``, zero past a sequence's end; ``[..., D*H] -> [..., O]``.

  ``live``: ``None``, or the ``[...]`` mask of live steps (1 live, 0 past the
  end, NaN for a sequence whose length was out of range, which makes its
  ``y`` NaN rather than a plausible number).
  """
  y = output_activation(model, output_logits(params, h))
  return y if live is None else jnp.where(live[..., None] > 0, y, 0 * live[..., None])


def time_order(x: jax.Array, reverse: bool) -> jax.Array:
  """``x [T, ...]`` in the order a direction reads time: reversed for the backward direction."""
  return jnp.flip(x, 0) if reverse else x


def stack_step(params: RNNParams, h: jax.Array, x_t: jax.Array, model: ModelSpec,
               live: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """One time step through every layer of a unidirectional stack, unchecked.

  ``h^l_t = act(W_xh^l h^{l-1}_t + b_h^l + W_hh^l h^l_{t-1})`` with ``h^{-1}_t = x_t``.

  Returns:
    ``(h_t [L, ..., H], h^{L-1}_t [..., H])``: every layer's new state and the top one.
  """
  states = []
  x = x_t
  for l, (cell,) in enumerate(params.layers):
    x = step(model, x @ cell.W_xh.T + cell.b_h, h[l], cell.W_hh.T, live)
    states.append(x)
  return jnp.stack(states), x


def rnn_cell(params: RNNParams, h_prev: jax.Array, x_t: jax.Array,
             model: ModelSpec = ModelSpec()) -> tuple[jax.Array, jax.Array]:
  """One time step of a unidirectional Elman RNN of ``L >= 1`` layers.

  ``h^l_t = act(W_xh^l h^{l-1}_t + W_hh^l h^l_{t-1} + b_h^l)`` (``h^{-1}_t = x_t``),
  ``y_t = out_act(W_hy h^{L-1}_t + b_y)``; for ``L = 1`` the seed's equations.

  The signature ``(h_prev [L, ..., H], x_t [..., I]) -> (h_t [L, ..., H], y_t [..., O])`` is
  ``lax.scan``'s; the leading dimensions are batch dimensions; no dropout. A
  bidirectional model has no step-by-step form: use :func:`jaxrnn.unroll`.

  Example:
    >>> import functools, jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> xs = jnp.ones((4, 7, 3))                                  # [T, B, I]
    >>> h_T, ys = jax.lax.scan(functools.partial(jaxrnn.rnn_cell, params),
    ...                        jnp.zeros((1, 7, 5)), xs)           # ys [T, B, O]
    >>> ys.shape
    (4, 7, 2)
  """
  shape = checks.check_params(params)
  check_specs(shape, model)
  checks.check_unidirectional(shape, "rnn_cell", "a bidirectional model reads the whole "
                              "sequence (use jaxrnn.unroll)")
  batch = jnp.shape(x_t)[:-1]
  checks.check_shape("x_t", x_t, "[..., I]", batch + (shape.input_size,))
  checks.check_shape("h_prev", h_prev, "[L, ..., H]",
                     (shape.num_layers,) + batch + (shape.hidden_size,))
  h_t, top = stack_step(params, h_prev, x_t, model)
  return h_t, readout(params, top, model)
