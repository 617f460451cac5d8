"""Stacked and bidirectional Elman RNNs, with dropout and mixed precision.

Layer ``l = 0..L-1`` has one Elman RNN per direction ``d`` (0 forward, 1 reverse):

``h^{l,0}_t = act(W_xh^{l,0} x^l_t + W_hh^{l,0} h^{l,0}_{t-1} + b_h^{l,0})`` (``t = 1..T``),
``h^{l,1}_t = act(W_xh^{l,1} x^l_t + W_hh^{l,1} h^{l,1}_{t+1} + b_h^{l,1})`` (``t = T..1``),

with ``x^0_t = x_t`` and ``x^{l+1}_t = merge(h^{l,0}_t, h^{l,1}_t)``, the
concatenation ``[h^{l,0}_t; h^{l,1}_t]`` (torch, Flax and Keras) or the sum.
The readout is ``y_t = out_act(W_hy x^L_t + b_y)``.

Each (layer, direction) is an Elman RNN without a readout
(:func:`layer_rnn`), run by :func:`jaxrnn.unroll.hidden_states`: by default its
gradient is the hand-derived BPTT (:func:`jaxrnn.recurrence.fused_hidden`),
and autodiff only chains the layers together. With ``lengths`` the reverse
direction starts at each sequence's own last step, as torch's packed sequences
and Flax's ``seq_lengths`` do.

States are time-major, ``[T, B, ...]``; initial and final states are stacked
as torch's ``h_0``/``h_n``, ``[L*D, B, H]`` with row ``l*D + d``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.cell import OUTPUT_ACTIVATIONS
from jaxrnn.dropout import check_rate, dropout_mask
from jaxrnn.init import RNNParams, check_params, init_params
from jaxrnn.losses import check_loss_inputs, step_losses
from jaxrnn.unroll import BACKWARDS, SequenceInputs, check_inputs, hidden_states

MERGES = ("concat", "sum")


class LayerParams(NamedTuple):
  """One direction of one layer: ``W_xh [H, I_l]``, ``W_hh [H, H]``, ``b_h [H]``."""
  W_xh: jax.Array
  W_hh: jax.Array
  b_h: jax.Array


class StackedParams(NamedTuple):
  """A stacked (optionally bidirectional) Elman RNN with a readout, one pytree.

  Attributes:
    layers: ``layers[l][d]`` is the :class:`LayerParams` of layer ``l``,
      direction ``d`` (``D = 1`` or ``2`` directions in every layer). Layer 0
      reads ``I`` inputs; layer ``l > 0`` reads ``D*H`` (``merge="concat"``)
      or ``H`` (``merge="sum"``).
    W_hy: readout weights, ``[O, D*H]`` (concat) or ``[O, H]`` (sum).
    b_y: readout bias, ``[O]``.
  """
  layers: tuple[tuple[LayerParams, ...], ...]
  W_hy: jax.Array
  b_y: jax.Array


class StackedShape(NamedTuple):
  """The sizes of a :class:`StackedParams`: ``I, H, O, L, D``."""
  input_size: int
  hidden_size: int
  output_size: int
  num_layers: int
  num_directions: int


class StackedOutputs(NamedTuple):
  """What :func:`unroll_stacked` returns.

  Attributes:
    hs: the top layer's merged states ``x^L_t``, ``[T, B, D*H]`` (concat) or
      ``[T, B, H]`` (sum): torch's ``output``, zero past each sequence's end.
    ys: ``y_t = out_act(W_hy x^L_t + b_y)``, ``[T, B, O]``, zero past the end.
    final: every layer's and direction's final state, ``[L*D, B, H]`` (row
      ``l*D + d``): torch's ``h_n``, the state at each sequence's own last
      step (forward) or first step (reverse).
  """
  hs: jax.Array
  ys: jax.Array
  final: jax.Array


def layer_rnn(layer: LayerParams) -> RNNParams:
  """``layer`` as an :class:`RNNParams` with an empty readout (``W_hy [0, H]``, ``b_y [0]``)."""
  hidden, dtype = jnp.shape(layer.W_hh)[0], jnp.result_type(layer.W_hh)
  return RNNParams(W_xh=layer.W_xh, W_hh=layer.W_hh, W_hy=jnp.zeros((0, hidden), dtype),
                   b_h=layer.b_h, b_y=jnp.zeros((0,), dtype))


def final_state(hs: jax.Array, reverse: bool = False) -> jax.Array:
  """The final state of :func:`jaxrnn.unroll`'s ``hs [T, B, H]``: ``hs[-1]``, or ``hs[0]`` if ``reverse``.

  With ``lengths`` the state freezes past each sequence's end, so this is each
  sequence's state after its own last valid step.
  """
  return hs[0] if reverse else hs[-1]


def merge_width(hidden_size: int, num_directions: int, merge: str) -> int:
  """Size of ``merge(h^{l,0}_t, h^{l,1}_t)``: ``D*H`` for ``"concat"``, ``H`` for ``"sum"``."""
  return num_directions * hidden_size if merge == "concat" else hidden_size


def init_stacked(key: jax.Array, input_size: int, hidden_size: int, output_size: int,
                 num_layers: int = 1, bidirectional: bool = False, merge: str = "concat",
                 scheme: str = "normal", dtype: Any = None, scale: float = 0.01) -> StackedParams:
  """Creates a :class:`StackedParams` from a ``jax.random`` key.

  Every (layer, direction) is initialised as an Elman RNN by
  :func:`jaxrnn.init_params` with ``scheme`` (its ``W_xh``, ``W_hh``,
  ``b_h``); the readout is the ``W_hy``/``b_y`` of ``init_params`` with
  hidden size ``D*H`` (concat) or ``H`` (sum).

  Example:
    >>> params = jaxrnn.init_stacked(jax.random.key(0), 3, 8, 2, num_layers=2,
    ...                              bidirectional=True)
    >>> params.layers[1][0].W_xh.shape, params.W_hy.shape
    ((8, 16), (2, 16))
  """
  if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
    raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
  _checks.check_choice("merge", merge, MERGES)
  num_dirs = 2 if bidirectional else 1
  width = merge_width(hidden_size, num_dirs, merge)
  keys = jax.random.split(key, num_layers * num_dirs + 1)

  def layer(k: jax.Array, in_size: int) -> LayerParams:
    p = init_params(k, in_size, hidden_size, 1, scheme, dtype, scale)
    return LayerParams(W_xh=p.W_xh, W_hh=p.W_hh, b_h=p.b_h)

  layers = tuple(tuple(layer(keys[l * num_dirs + d], input_size if l == 0 else width)
                       for d in range(num_dirs)) for l in range(num_layers))
  readout = init_params(keys[-1], 1, width, output_size, scheme, dtype, scale)
  return StackedParams(layers=layers, W_hy=readout.W_hy, b_y=readout.b_y)


def check_stacked(params: StackedParams, merge: str = "concat") -> StackedShape:
  """Checks that ``params`` is a consistent :class:`StackedParams` for ``merge``.

  Raises:
    ValueError: no layers, layers with different numbers of directions (or
      not 1 or 2), or a size that disagrees with the others (a message names
      ``layers[l][d]``).
    TypeError: not a ``StackedParams`` of ``LayerParams``, or mixed dtypes.
  """
  if not isinstance(params, StackedParams):
    raise TypeError(f"params must be a StackedParams, got {type(params).__name__}")
  _checks.check_choice("merge", merge, MERGES)
  layers = params.layers
  if not isinstance(layers, tuple) or not layers or not all(isinstance(l, tuple) for l in layers):
    raise ValueError("params.layers must be a non-empty tuple (layers) of tuples (directions)")
  num_dirs = len(layers[0])
  if num_dirs not in (1, 2) or any(len(layer) != num_dirs for layer in layers):
    raise ValueError(f"every layer must have the same 1 or 2 directions, got "
                     f"{[len(layer) for layer in layers]}")
  if not all(isinstance(p, LayerParams) for layer in layers for p in layer):
    raise TypeError("params.layers[l][d] must be LayerParams")
  _checks.check_floating("params.W_hy", params.W_hy)
  dtype = jnp.result_type(params.W_hy)
  hidden = jnp.shape(layers[0][0].W_hh)[0]
  width = merge_width(hidden, num_dirs, merge)
  for l, layer in enumerate(layers):
    for d, p in enumerate(layer):
      name = f"params.layers[{l}][{d}]"
      try:
        in_size, _, _ = check_params(layer_rnn(p))
      except (ValueError, TypeError) as e:
        raise type(e)(f"{name}: {e}") from None
      _checks.check_size(f"{name}.W_hh", p.W_hh, 0, hidden, "the hidden size H of layers[0][0]")
      _checks.check_same_dtype(f"{name}.W_hh", p.W_hh, dtype, "params.W_hy")
      if l > 0:
        _checks.check_size(f"{name}.W_xh", p.W_xh, 1, width,
                           f"the width of merge={merge!r} over {num_dirs} direction(s)")
  _checks.check_rank("params.W_hy", params.W_hy, 2, "[O, D*H] or [O, H]")
  _checks.check_size("params.W_hy", params.W_hy, 1, width,
                     f"the width of merge={merge!r} over {num_dirs} direction(s)")
  _checks.check_rank("params.b_y", params.b_y, 1, "[O]")
  _checks.check_size("params.b_y", params.b_y, 0, jnp.shape(params.W_hy)[0], "O (from W_hy)")
  _checks.check_same_dtype("params.b_y", params.b_y, dtype, "params.W_hy")
  return StackedShape(jnp.shape(layers[0][0].W_xh)[1], hidden, jnp.shape(params.W_hy)[0],
                      len(layers), num_dirs)


def _check_view(params: StackedParams) -> RNNParams:
  """Layer 0 (forward) with the readout's first ``H`` columns: an :class:`RNNParams` with the
  stacked model's ``I``, ``H``, ``O`` and dtype, for the shared checks of ``xs``, ``lengths``
  and ``targets`` (:func:`jaxrnn.unroll.check_inputs`, :func:`jaxrnn.losses.check_loss_inputs`)."""
  first = params.layers[0][0]
  hidden = jnp.shape(first.W_hh)[0]
  return RNNParams(W_xh=first.W_xh, W_hh=first.W_hh, W_hy=params.W_hy[:, :hidden],
                   b_h=first.b_h, b_y=params.b_y)


def _check_run(params: StackedParams, shape: StackedShape, xs: jax.Array,
               h0: jax.Array | None, dropout: float, input_dropout: float,
               state_dropout: float, backward: str, compute_dtype: Any) -> jax.Array:
  """Checks the options shared by :func:`unroll_stacked` and :func:`stacked_loss`; returns ``h0``."""
  check_rate("dropout", dropout)
  check_rate("input_dropout", input_dropout)
  check_rate("state_dropout", state_dropout)
  _checks.check_choice("backward", backward, BACKWARDS)
  if compute_dtype is not None and not jnp.issubdtype(jnp.dtype(compute_dtype), jnp.floating):
    raise TypeError(f"compute_dtype must be a floating-point dtype, got {compute_dtype}")
  num_states = shape.num_layers * shape.num_directions
  if h0 is None:
    return jnp.zeros((num_states, jnp.shape(xs)[1], shape.hidden_size), params.W_hy.dtype)
  _checks.check_rank("h0", h0, 3, "[L*D, B, H]")
  _checks.check_size("h0", h0, 0, num_states, "L*D (layers times directions)")
  _checks.check_size("h0", h0, 1, jnp.shape(xs)[1], "the batch size B of xs")
  _checks.check_size("h0", h0, 2, shape.hidden_size, "the hidden size H")
  _checks.check_same_dtype("h0", h0, params.W_hy.dtype, "params")
  _checks.check_finite("h0", h0)
  return jnp.asarray(h0)


def stacked_hidden(params: StackedParams, xs: jax.Array, h0: jax.Array, mask: jax.Array | None,
                   activation: str, merge: str = "concat", dropout: float = 0.0,
                   input_dropout: float = 0.0, state_dropout: float = 0.0,
                   key: jax.Array | None = None, backward: str = "fused", scan_unroll: int = 1,
                   compute_dtype: Any = None) -> tuple[jax.Array, jax.Array]:
  """The layers of :func:`unroll_stacked` on checked inputs, without the readout.

  Args:
    params, xs ``[T, B, I]``, h0 ``[L*D, B, H]``, mask ``[T, B]`` or ``None``:
      already checked (see :func:`unroll_stacked` for the rest).

  Returns:
    ``(x^L [T, B, D*H or H], final [L*D, B, H])`` in the params' dtype.
  """
  dtype = params.W_hy.dtype
  compute = dtype if compute_dtype is None else jnp.dtype(compute_dtype)
  num_layers, num_dirs = len(params.layers), len(params.layers[0])
  layer_keys = None if key is None else jax.random.split(key, num_layers)
  x = xs.astype(compute)                                                # [T, B, I]
  h0 = h0.astype(compute)                                               # [L*D, B, H]
  finals = []
  for l, layer in enumerate(params.layers):
    if layer_keys is not None:
      k_input, k_state, k_between = jax.random.split(layer_keys[l], 3)
    states = []
    for d, direction in enumerate(layer):
      p = layer_rnn(jax.tree.map(lambda a: a.astype(compute), direction))
      x_d = x
      if layer_keys is not None and input_dropout > 0:
        m = dropout_mask(jax.random.fold_in(k_input, d), input_dropout, x.shape[1:], compute)
        x_d = x * m                                                     # [T, B, I_l]
      if layer_keys is not None and state_dropout > 0:
        m = dropout_mask(jax.random.fold_in(k_state, d), state_dropout, p.b_h.shape, compute)
        p = p._replace(W_hh=p.W_hh * m)                                 # W_hh diag(m)
      reverse = d == 1
      hs = hidden_states(p, x_d, SequenceInputs(h0[l * num_dirs + d], mask), activation,
                         reverse, backward, scan_unroll)                # [T, B, H]
      states.append(hs)
      finals.append(final_state(hs, reverse))
    x = states[0] if num_dirs == 1 else (
        jnp.concatenate(states, axis=-1) if merge == "concat" else states[0] + states[1])
    if mask is not None:
      x = jnp.where(mask[..., None] > 0, x, 0)                          # [T, B, D*H or H]
    if layer_keys is not None and dropout > 0 and l < num_layers - 1:
      x = x * dropout_mask(k_between, dropout, x.shape, compute)
  return x.astype(dtype), jnp.stack(finals).astype(dtype)


def readout(params: StackedParams, hs: jax.Array) -> jax.Array:
  """``z_t = W_hy x^L_t + b_y``; ``[..., D*H or H] -> [..., O]``."""
  return hs @ params.W_hy.T + params.b_y


def unroll_stacked(params: StackedParams, xs: jax.Array, h0: jax.Array | None = None,
                   lengths: jax.Array | None = None, activation: str = "tanh",
                   output_activation: str = "identity", merge: str = "concat",
                   dropout: float = 0.0, input_dropout: float = 0.0, state_dropout: float = 0.0,
                   key: jax.Array | None = None, backward: str = "fused", scan_unroll: int = 1,
                   compute_dtype: Any = None) -> StackedOutputs:
  """Runs a stacked, optionally bidirectional RNN over a batch of sequences.

  See the module docstring for the equations. This is ``torch.nn.RNN``
  (``num_layers``, ``bidirectional``, ``dropout``, ``nonlinearity``) with a
  readout, Flax's ``Bidirectional`` with ``merge_fn``, and Keras'
  ``SimpleRNN(dropout, recurrent_dropout)``.

  Args:
    params: :class:`StackedParams`.
    xs: inputs, ``[T, B, I]``, in the params' dtype.
    h0: initial states ``[L*D, B, H]`` (row ``l*D + d``); zeros when ``None``.
    lengths: ``[B]`` integers in ``[0, T]``, or ``None`` for all ``T``.
    activation: ``"tanh"`` or ``"relu"``.
    output_activation: ``"identity"``, ``"sigmoid"``, ``"tanh"`` or ``"softmax"``.
    merge: ``"concat"`` or ``"sum"`` of the two directions; must match the
      params' shapes (irrelevant for one direction).
    dropout: torch's dropout on every layer's output except the last, a fresh
      mask per step.
    input_dropout: variational dropout on every layer's input, one ``[B, I_l]``
      mask per layer and direction for all steps.
    state_dropout: variational dropout on ``h_{t-1}`` in ``W_hh h_{t-1}``, one
      ``[H]`` mask per layer and direction for all steps and the whole batch
      (``W_hh diag(m)``; the hand-derived BPTT still applies).
    key: a ``jax.random`` key; dropout is applied only when one is given, so
      pass ``None`` at evaluation (the rates may stay as they are).
    backward: ``"fused"`` (each layer's gradient by the hand-derived BPTT) or
      ``"autodiff"``; both give the same numbers.
    scan_unroll: steps per ``lax.scan`` iteration (a speed knob only).
    compute_dtype: e.g. ``jnp.bfloat16``: the layers run in this dtype (their
      params, inputs and states cast to it); the readout, the outputs and the
      gradients stay in the params' dtype. ``None``: the params' dtype.

  Returns:
    :class:`StackedOutputs` ``(hs, ys, final)``.

  Example:
    >>> params = jaxrnn.init_stacked(jax.random.key(0), 3, 8, 2, num_layers=2, bidirectional=True)
    >>> hs, ys, final = jaxrnn.unroll_stacked(params, jnp.ones((5, 4, 3)),
    ...                                       lengths=jnp.array([5, 3, 1, 4]))
    >>> hs.shape, ys.shape, final.shape
    ((5, 4, 16), (5, 4, 2), (4, 4, 8))
  """
  shape = check_stacked(params, merge)
  _checks.check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
  inputs = check_inputs(_check_view(params), xs, None, lengths, activation)
  h0 = _check_run(params, shape, xs, h0, dropout, input_dropout, state_dropout, backward,
                  compute_dtype)
  hs, final = stacked_hidden(params, xs, h0, inputs.mask, activation, merge, dropout,
                             input_dropout, state_dropout, key, backward, scan_unroll,
                             compute_dtype)                             # [T, B, D*H], [L*D, B, H]
  ys = OUTPUT_ACTIVATIONS[output_activation](readout(params, hs))       # [T, B, O]
  if inputs.mask is not None:
    ys = jnp.where(inputs.mask[..., None] > 0, ys, 0)
  return StackedOutputs(hs=hs, ys=ys, final=final)


def unroll_stacked_batch_first(params: StackedParams, xs: jax.Array, **kwargs) -> StackedOutputs:
  """:func:`unroll_stacked` for batch-first ``xs [B, T, I]``.

  Returns ``hs [B, T, .]`` and ``ys [B, T, O]``; ``h0``/``final`` stay
  ``[L*D, B, H]`` (as torch's with ``batch_first=True``). Keyword arguments are
  :func:`unroll_stacked`'s.
  """
  _checks.check_rank("xs", xs, 3, "[B, T, I]")
  hs, ys, final = unroll_stacked(params, jnp.swapaxes(xs, 0, 1), **kwargs)
  return StackedOutputs(hs=jnp.swapaxes(hs, 0, 1), ys=jnp.swapaxes(ys, 0, 1), final=final)


def stacked_loss(params: StackedParams, xs: jax.Array, targets: jax.Array,
                 loss: str = "cross_entropy", lengths: jax.Array | None = None,
                 h0: jax.Array | None = None, activation: str = "tanh",
                 output_activation: str = "identity", reduction: str = "sum",
                 target_mask: jax.Array | None = None, merge: str = "concat",
                 dropout: float = 0.0, input_dropout: float = 0.0, state_dropout: float = 0.0,
                 key: jax.Array | None = None, backward: str = "fused", scan_unroll: int = 1,
                 compute_dtype: Any = None) -> tuple[jax.Array, jax.Array]:
  """``L = sum_t w_t L_t(y_t, target_t)`` of a stacked RNN, and its final states.

  The loss of :func:`jaxrnn.sequence_loss` (same ``loss``, ``reduction``,
  ``target_mask`` and checks) on :func:`unroll_stacked`'s outputs; the other
  arguments are :func:`unroll_stacked`'s. The loss is always computed in the
  params' dtype, also when the layers run in ``compute_dtype``.

  Returns:
    ``(L, final [L*D, B, H])``, for ``jax.value_and_grad(..., has_aux=True)``.

  Example:
    >>> (loss, final), grads = jax.value_and_grad(jaxrnn.stacked_loss, has_aux=True)(
    ...     params, xs, targets, lengths=lengths)
  """
  shape = check_stacked(params, merge)
  inputs, weights = check_loss_inputs(_check_view(params), xs, targets, loss, lengths, None,
                                      activation, output_activation, reduction,
                                      target_mask)                      # w [T, B]
  h0 = _check_run(params, shape, xs, h0, dropout, input_dropout, state_dropout, backward,
                  compute_dtype)
  hs, final = stacked_hidden(params, xs, h0, inputs.mask, activation, merge, dropout,
                             input_dropout, state_dropout, key, backward, scan_unroll,
                             compute_dtype)                             # [T, B, D*H], [L*D, B, H]
  z = readout(params, hs)                                               # [T, B, O]
  return jnp.sum(weights * step_losses(z, targets, loss, output_activation)), final
