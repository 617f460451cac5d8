"""The forward pass of every model: one body, ``lax.scan`` over time in each layer.

Each (layer, direction) runs the chain of :mod:`jaxrnn.recurrence`, the
reverse direction reading time backwards; ``x^{l+1}_t = [h^{l,0}_t; h^{l,1}_t]``
feeds the next layer and the top one the read-out. Time is the leading axis.

**Past a sequence's end** (``t >= lengths[b]``) every layer's output and
``y_t`` are zero (torch's packed sequences), the state stops at the last live
step and is the final state; the reverse direction starts at each sequence's
own last step. Under ``jit`` a length outside ``[0, T]`` (which cannot be
checked there) makes that sequence's ``hs``, ``ys`` and final state NaN.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import checks, timesplit
from jaxrnn.cell import readout, time_order
from jaxrnn.dropout import DropoutMasks, draw_masks
from jaxrnn.pytrees import CellParams, RNNParams
from jaxrnn.recurrence import fused_layer, scan_hidden
from jaxrnn.spec import ComputeSpec, ModelSpec, check_specs, precision_scope


class Outputs(NamedTuple):
  """What :func:`unroll` returns: the top layer's output ``hs = x^L [T, B, D*H]`` (torch's
  ``output``), ``ys [T, B, O]`` and every cell's ``final`` state ``[L*D, B, H]`` (row ``l*D + d``,
  torch's ``h_n``)."""
  hs: jax.Array
  ys: jax.Array
  final: jax.Array


class Trace(NamedTuple):
  """What the forward body computed: each layer's ``inputs`` ``x^l [T, B, I_l]``, each cell's
  ``states[l][d]`` ``[T, B, H]`` in time order (held past a sequence's end), the ``top``
  output ``x^L [T, B, D*H]`` (zero there) and the ``final`` states ``[L*D, B, H]``."""
  inputs: tuple[jax.Array, ...]
  states: tuple[tuple[jax.Array, ...], ...]
  top: jax.Array
  final: jax.Array


def layer_states(cell: CellParams, xs: jax.Array, h0: jax.Array, mask: jax.Array | None,
                 reverse: bool, model: ModelSpec, compute: ComputeSpec) -> jax.Array:
  """One cell over a sequence: ``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``; ``[T, B, H]``.

  ``reverse`` runs from ``t = T`` down to 1. ``compute.gradient == "fused"``
  differentiates through the hand-derived BPTT
  (:func:`jaxrnn.recurrence.fused_layer`), otherwise through ``lax.scan``.
  """
  xs = time_order(xs, reverse)
  mask = None if mask is None else time_order(mask, reverse)
  if compute.gradient == "fused":
    hs = fused_layer(xs, cell, h0, mask, model, compute)                  # [T, B, H]
  else:
    with precision_scope(compute):
      projected = xs @ cell.W_xh.T                                       # [T, B, H]
    hs = scan_hidden(projected, cell.W_hh, h0, mask, model, compute, cell.b_h)
  return time_order(hs, reverse)


def forward(params: RNNParams, xs: jax.Array, h0: jax.Array, mask: jax.Array | None,
            model: ModelSpec, compute: ComputeSpec,
            masks: DropoutMasks | None = None) -> Trace:
  """The layers of every model on checked ``xs [T, B, I]``, ``h0 [L*D, B, H]`` and ``mask
  [T, B]`` (or ``None``), without the read-out; the layers run in ``compute.dtype``, with the
  dropout ``masks`` of :func:`jaxrnn.dropout.draw_masks` (or ``None``). Returns a
  :class:`Trace`, ``top`` and ``final`` in the params' dtype."""
  dtype = params.W_hy.dtype
  work = dtype if compute.dtype is None else jnp.dtype(compute.dtype)
  num_dirs = len(params.layers[0])
  x, h0 = xs.astype(work), h0.astype(work)                               # [T, B, I], [L*D, B, H]
  inputs, states, finals = [], [], []
  for l, layer in enumerate(params.layers):
    inputs.append(x)
    cells = []
    for d, cell in enumerate(layer):
      cell = jax.tree.map(lambda a: a.astype(work), cell)
      x_d = x if masks is None or masks.inputs is None else x * masks.inputs[l][d]
      if masks is not None and masks.state is not None:
        cell = cell._replace(W_hh=cell.W_hh * masks.state[l][d])        # W_hh diag(m)
      hs = layer_states(cell, x_d, h0[l * num_dirs + d], mask, d == 1, model,
                        compute)                                         # [T, B, H]
      cells.append(hs)
      finals.append(h0[l * num_dirs + d] if not len(hs) else hs[0] if d == 1 else hs[-1])
    states.append(tuple(cells))
    x = jnp.concatenate(cells, axis=-1) if num_dirs == 2 else cells[0]  # [T, B, D*H]
    if mask is not None:
      x = jnp.where(mask[..., None] > 0, x, (0 * mask[..., None]).astype(x.dtype))  # NaN: bad length
    if masks is not None and masks.between is not None and l < len(params.layers) - 1:
      x = x * masks.between[l]
  final = jnp.stack(finals)                                              # [L*D, B, H]
  if mask is not None:
    final = final + 0 * mask.sum(0)[None, :, None]                      # NaN for a bad length
  return Trace(tuple(inputs), tuple(states), x.astype(dtype), final.astype(dtype))


def unroll(params: RNNParams, xs: jax.Array, h0: jax.Array | None = None,
           lengths: jax.Array | None = None, *, model: ModelSpec = ModelSpec(),
           compute: ComputeSpec = ComputeSpec(), key: jax.Array | None = None,
           mesh: Any = None) -> Outputs:
  """Runs the RNN (any number of layers, one or two directions) over a batch of sequences.

  ``h^{l,d}_t = act(W_xh^{l,d} x^l_t + W_hh^{l,d} h^{l,d}_{t-1} + b_h^{l,d})`` (``h_{t+1}``
  for the reverse direction, ``d = 1``),
  ``y_t = out_act(W_hy x^L_t + b_y)``; for one layer the seed's
  ``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``, ``y_t = out_act(W_hy h_t + b_y)``.

  ``xs [T, B, I]`` in the params' dtype, ``h0 [L*D, B, H]`` (row ``l*D + d``; zeros when
  ``None``), ``lengths [B]`` in ``[0, T]`` (``None``: all ``T``), a ``key`` for dropout
  (``None``: none). Returns :class:`Outputs` ``(hs [T, B, D*H], ys [T, B, O], final)``.
  ``mesh`` (a 1-D ``Mesh`` or a device count) splits the batch over its devices, or, for
  fewer sequences than devices, time (:func:`jaxrnn.split_time`, which also reports how).

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> hs, ys, final = jaxrnn.unroll(params, jnp.ones((4, 7, 3)),
    ...                               lengths=jnp.array([4, 2, 0, 1, 4, 3, 3]))
    >>> hs.shape, ys.shape, final.shape
    ((4, 7, 5), (4, 7, 2), (1, 7, 5))
  """
  shape, h0, mask = checks.check_inputs(params, xs, h0, lengths)
  check_specs(shape, model, None, compute)
  if mesh is not None:
    if key is not None:
      raise ValueError("key must be None with mesh=: no dropout on a mesh here (train with "
                       "make_train_step(mesh=...))")
    return timesplit.on_mesh(unroll, lambda out: Outputs(*out[:3]), params, xs, h0, lengths, mesh,
                             model=model, compute=compute)
  num_steps, batch = jnp.shape(xs)[:2]
  masks = draw_masks(key, model, shape, num_steps, batch, compute.dtype or params.W_hy.dtype)
  return outputs(params, xs, h0, mask, masks, model, compute)


@functools.partial(jax.jit, static_argnums=(5, 6))
def outputs(params: RNNParams, xs: jax.Array, h0: jax.Array, mask: jax.Array | None,
            masks: DropoutMasks | None, model: ModelSpec, compute: ComputeSpec) -> Outputs:
  """:func:`unroll` on checked inputs, one program per shape and specs (also when eager)."""
  trace = forward(params, xs, h0, mask, model, compute, masks)
  with precision_scope(compute):
    ys = readout(params, trace.top, model, mask)                         # [T, B, O]
  return Outputs(trace.top, ys, trace.final)


def unroll_batch_first(params: RNNParams, xs: jax.Array, h0: jax.Array | None = None,
                       lengths: jax.Array | None = None, **kwargs) -> Outputs:
  """:func:`unroll` for batch-first ``xs [B, T, I]``: ``hs [B, T, D*H]``, ``ys [B, T, O]``;
  ``h0`` and ``final`` stay ``[L*D, B, H]``, as torch's with ``batch_first=True``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> hs, ys, final = jaxrnn.unroll_batch_first(params, jnp.ones((7, 4, 3)))  # [B, T, I]
    >>> hs.shape, ys.shape, final.shape
    ((7, 4, 5), (7, 4, 2), (1, 7, 5))
  """
  checks.check_shape("xs", xs, "[B, T, I]", (None, None, None))
  hs, ys, final = unroll(params, jnp.swapaxes(xs, 0, 1), h0, lengths, **kwargs)
  return Outputs(jnp.swapaxes(hs, 0, 1), jnp.swapaxes(ys, 0, 1), final)
