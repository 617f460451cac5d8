"""Unrolling the cell over a whole sequence with ``lax.scan``.

``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)`` for ``t = 1..T`` (the seed's
"chain of repeating modules"), then ``y_t = out_act(W_hy h_t + b_y)``.
Time is the leading axis (``[T, B, ...]``); :func:`unroll_batch_first` takes
``[B, T, ...]``. Compile time does not depend on ``T``: there is no Python loop
over time.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _checks
from jaxrnn.cell import ACTIVATIONS, OUTPUT_ACTIVATIONS, output_logits
from jaxrnn.init import RNNParams, check_params
from jaxrnn.recurrence import fused_hidden, input_projection, lengths_to_mask, scan_hidden

BACKWARDS = ("fused", "autodiff")


class SequenceInputs(NamedTuple):
  """Checked inputs of one unroll: ``h0 [B, H]`` and ``mask [T, B]`` (or ``None``)."""
  h0: jax.Array
  mask: jax.Array | None


def check_inputs(params: RNNParams, xs: jax.Array, h0: jax.Array | None,
                 lengths: jax.Array | None, activation: str) -> SequenceInputs:
  """Validates ``params``, ``xs [T, B, I]``, ``h0 [B, H]``, ``lengths [B]`` and ``activation``.

  Returns:
    :class:`SequenceInputs` with ``h0`` (zeros when ``None``) and the
    ``[T, B]`` mask built from ``lengths`` (``None`` when ``lengths`` is).

  Raises:
    ValueError: wrong rank or size, a ``lengths`` entry outside ``[0, T]``,
      NaN/inf in ``xs`` or ``h0``, or an unknown ``activation``.
    TypeError: a non-floating ``xs``/``h0``, a dtype that differs from the
      params', or non-integer ``lengths``.
  """
  _, hidden, _ = check_params(params)
  _checks.check_choice("activation", activation, ACTIVATIONS)
  dtype = params.W_hh.dtype
  _checks.check_rank("xs", xs, 3, "[T, B, I]")
  _checks.check_size("xs", xs, 2, params.W_xh.shape[1], "the input size I of params.W_xh")
  _checks.check_floating("xs", xs)
  _checks.check_same_dtype("xs", xs, dtype, "params")
  _checks.check_finite("xs", xs)
  num_steps, batch = jnp.shape(xs)[:2]
  if h0 is None:
    h0 = jnp.zeros((batch, hidden), dtype)
  else:
    _checks.check_rank("h0", h0, 2, "[B, H]")
    _checks.check_size("h0", h0, 0, batch, "the batch size B of xs")
    _checks.check_size("h0", h0, 1, hidden, "the hidden size H of params.W_hh")
    _checks.check_same_dtype("h0", h0, dtype, "params")
    _checks.check_finite("h0", h0)
  if lengths is None:
    return SequenceInputs(jnp.asarray(h0), None)
  _checks.check_rank("lengths", lengths, 1, "[B]")
  _checks.check_size("lengths", lengths, 0, batch, "the batch size B of xs")
  if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
    raise TypeError(f"lengths must have an integer dtype, got {jnp.result_type(lengths)}")
  if not isinstance(lengths, jax.core.Tracer):
    values = np.asarray(lengths)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > num_steps:
      raise ValueError(f"lengths must lie in [0, T={num_steps}], got values in [{low}, {high}]")
  return SequenceInputs(jnp.asarray(h0), lengths_to_mask(jnp.asarray(lengths), num_steps, dtype))


def hidden_states(params: RNNParams, xs: jax.Array, inputs: SequenceInputs, activation: str,
                  reverse: bool = False, backward: str = "fused",
                  scan_unroll: int = 1) -> jax.Array:
  """``hs [T, B, H]`` from checked inputs; ``reverse`` runs from ``t = T`` down to 1.

  ``backward="fused"`` differentiates through the hand-derived BPTT
  (:func:`jaxrnn.recurrence.fused_hidden`), ``"autodiff"`` through ``lax.scan``.
  """
  _checks.check_choice("backward", backward, BACKWARDS)
  pre = input_projection(params.W_xh, params.b_h, xs)                 # [T, B, H]
  mask = inputs.mask
  if reverse:
    pre = jnp.flip(pre, 0)
    mask = None if mask is None else jnp.flip(mask, 0)
  hidden = fused_hidden if backward == "fused" else scan_hidden
  hs = hidden(pre, params.W_hh, inputs.h0, mask, activation, scan_unroll)   # [T, B, H]
  return jnp.flip(hs, 0) if reverse else hs


def unroll(params: RNNParams, xs: jax.Array, h0: jax.Array | None = None,
           lengths: jax.Array | None = None, activation: str = "tanh",
           output_activation: str = "identity", reverse: bool = False,
           backward: str = "fused", scan_unroll: int = 1) -> tuple[jax.Array, jax.Array]:
  """Runs the RNN over a batch of sequences.

  ``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``, ``y_t = out_act(W_hy h_t + b_y)``.

  With ``lengths``, sequence ``b`` lives on steps ``t < lengths[b]``: past its
  end its state stays frozen and its outputs are zero, so ``hs[-1]`` is every
  sequence's own final state. ``reverse=True`` reads each sequence from its own
  last step back to its first (padding is skipped, as with torch's packed
  sequences), and ``hs[0]`` is then the final state.

  Args:
    params: :class:`RNNParams`.
    xs: inputs, ``[T, B, I]``.
    h0: initial state ``[B, H]``; zeros when ``None``.
    lengths: ``[B]`` integers in ``[0, T]``, or ``None`` for all ``T``.
    activation: ``"tanh"`` or ``"relu"``.
    output_activation: ``"identity"``, ``"sigmoid"``, ``"tanh"`` or ``"softmax"``.
    reverse: run from the last step to the first.
    backward: ``"fused"`` (gradients by the hand-derived BPTT) or
      ``"autodiff"``; both give the same numbers.
    scan_unroll: steps per ``lax.scan`` iteration (a speed knob only).

  Returns:
    ``(hs [T, B, H], ys [T, B, O])``.

  Example:
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> hs, ys = jaxrnn.unroll(params, jnp.ones((4, 7, 3)), lengths=jnp.array([4, 2, 0, 1, 4, 3, 3]))
    >>> hs.shape, ys.shape
    ((4, 7, 5), (4, 7, 2))
  """
  _checks.check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
  inputs = check_inputs(params, xs, h0, lengths, activation)
  hs = hidden_states(params, xs, inputs, activation, reverse, backward, scan_unroll)
  ys = OUTPUT_ACTIVATIONS[output_activation](output_logits(params, hs))  # [T, B, O]
  if inputs.mask is not None:
    ys = jnp.where(inputs.mask[..., None] > 0, ys, 0)
  return hs, ys


def unroll_batch_first(params: RNNParams, xs: jax.Array, **kwargs) -> tuple[jax.Array, jax.Array]:
  """:func:`unroll` for batch-first ``xs [B, T, I]``; returns ``hs [B, T, H], ys [B, T, O]``.

  Keyword arguments are :func:`unroll`'s (``h0 [B, H]``, ``lengths [B]``, ...).
  """
  _checks.check_rank("xs", xs, 3, "[B, T, I]")
  hs, ys = unroll(params, jnp.swapaxes(xs, 0, 1), **kwargs)
  return jnp.swapaxes(hs, 0, 1), jnp.swapaxes(ys, 0, 1)
