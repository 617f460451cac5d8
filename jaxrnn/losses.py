"""Sequence losses ``L = sum_t w_t L_t(y_t, target_t)``, for every model.

* ``"cross_entropy"``: ``L_t = -log softmax(z_t)[target_t]`` for class targets
  ``[T, B]``, from the logits ``z_t = W_hy x^L_t + b_y`` (stably), with the
  output activation ``"identity"`` or ``"softmax"``;
* ``"squared_error"``: ``L_t = sum_o (y_t - target_t)_o^2`` for targets ``[T, B, O]``.

``w_t`` is 0 past a sequence's end and outside ``target_mask``;
``reduction="sum"`` is the seed's ``L = sum_t L_t`` (over the batch too),
``"mean"`` divides by the live ``(t, b)`` steps. Under ``jit``, where values
cannot be checked, a class outside ``[0, O)``, a length outside ``[0, T]`` or a
``target_mask`` entry other than 0 or 1 makes the loss NaN, and NaN reaches its gradient: never
a plausible number.
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import checks
from jaxrnn.cell import output_activation, output_logits
from jaxrnn.dropout import DropoutMasks, draw_masks
from jaxrnn.pytrees import Batch, RNNParams, Shape, shape_of
from jaxrnn.recurrence import STATES
from jaxrnn.spec import (ComputeSpec, LossSpec, ModelSpec, check_specs, fused_chunk,
                         precision_scope, resolve_checkpoint)
from jaxrnn.unroll import forward


class Problem(NamedTuple):
  """A checked batch's extras for the loss body, split along ``B`` with it: ``h0 [L*D, B, H]``,
  the length ``mask [T, B]`` (or ``None``), the loss ``weights`` ``w_t [T, B]`` and the dropout
  ``masks`` of the whole batch (or ``None``)."""
  h0: jax.Array
  mask: jax.Array | None
  weights: jax.Array
  masks: DropoutMasks | None


def check_targets(batch: Batch, shape: Shape, dtype: Any, loss: LossSpec) -> None:
  """Checks the shapes and dtypes of ``batch.targets`` and ``batch.target_mask`` (and that
  they are finite, 0/1 where the arrays are concrete)."""
  num_steps, size = jnp.shape(batch.xs)[:2]
  if batch.target_mask is not None:
    checks.check_mask("batch.target_mask", batch.target_mask, num_steps, size)
  targets = batch.targets
  if loss.loss == "cross_entropy":
    checks.check_shape("batch.targets", targets, "[T, B] (class indices)", (num_steps, size))
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
      raise TypeError(f"cross_entropy targets must be integer class indices, "
                      f"got dtype {jnp.result_type(targets)}")
  else:
    checks.check_array("batch.targets", targets, "[T, B, O]", (num_steps, size, shape.output_size),
                       dtype)


def loss_weights(mask: jax.Array | None, target_mask: jax.Array | None, shape: tuple[int, int],
                 loss: LossSpec, dtype: jnp.dtype) -> jax.Array:
  """``w_t [T, B]``: the length mask times ``target_mask`` (NaN where it is not 0 or 1), over
  their sum for ``"mean"`` (zero weights stay zero)."""
  weights = jnp.ones(shape, dtype) if mask is None else mask.astype(dtype)
  if target_mask is not None:
    target_mask = jnp.asarray(target_mask, dtype)
    valid = (target_mask == 0) | (target_mask == 1)
    weights = weights * jnp.where(valid, target_mask, jnp.nan)
  if loss.reduction == "mean":
    weights = weights / jnp.maximum(weights.sum(), 1)
  return weights


def prepare(params: RNNParams, batch: Batch, h0: jax.Array | None, key: jax.Array | None,
            model: ModelSpec, loss: LossSpec, compute: ComputeSpec) -> Problem:
  """Checks every argument of a loss (``ValueError``/``TypeError`` naming it) and builds its
  :class:`Problem`: ``h0``, the length mask, the loss weights and the dropout masks."""
  checks.check_type("batch", batch, Batch)
  shape, h0, mask = checks.check_inputs(params, batch.xs, h0, batch.lengths, "batch.xs")
  check_specs(shape, model, loss, compute)
  if compute.gradient == "bptt" and (key is not None or compute.checkpoint_every not in
                                     (None, "auto") or compute.dtype is not None):
    raise ValueError("compute.gradient='bptt' is the plain hand-derived oracle: it takes no "
                     "dropout key, checkpoint_every or compute dtype")
  if shape.output_size == 0:
    raise ValueError("params.W_hy has no rows: a loss needs a read-out of O >= 1 outputs "
                     "(from_torch(state_dict, linear) adds one)")
  dtype = params.W_hy.dtype
  check_targets(batch, shape, dtype, loss)
  num_steps, size = jnp.shape(batch.xs)[:2]
  weights = loss_weights(mask, batch.target_mask, (num_steps, size), loss, dtype)
  if loss.loss == "cross_entropy" and checks.is_concrete(weights, batch.targets):
    classes = np.asarray(batch.targets)
    if np.any((np.asarray(weights) != 0) & ((classes < 0) | (classes >= shape.output_size))):
      raise ValueError(f"batch.targets must be class indices in [0, {shape.output_size}) on "
                       "every live step")
  masks = draw_masks(key, model, shape, num_steps, size, compute.dtype or dtype)
  return Problem(h0, mask, weights, masks)


@jax.custom_vjp
def invalid_to_nan(x: jax.Array, valid: jax.Array) -> jax.Array:
  """``x`` where ``valid``, else NaN, and so is its gradient wherever the cotangent is nonzero.

  ``jnp.where(valid, x, nan)`` alone would pass a zero gradient back from a NaN term, so a step
  whose loss is NaN would still give a finite, plausible update; a zero cotangent (a step that
  :func:`weighted_sum` drops) stays zero, as in :func:`jaxrnn.bptt`'s ``dz_t``.
  """
  return jnp.where(valid, x, jnp.nan)


def _invalid_to_nan_fwd(x, valid):
  return invalid_to_nan(x, valid), valid


def _invalid_to_nan_bwd(valid, g):
  return jnp.where(valid | (g == 0), g, jnp.nan), None


invalid_to_nan.defvjp(_invalid_to_nan_fwd, _invalid_to_nan_bwd)


def step_losses(z: jax.Array, targets: jax.Array, model: ModelSpec, loss: LossSpec) -> jax.Array:
  """``L_t(y_t, target_t) [T, B]`` from the logits ``z [T, B, O]`` and ``targets`` (``[T, B]``
  classes or ``[T, B, O]`` values), unweighted; a class outside ``[0, O)`` gives NaN, and a NaN
  gradient where the step counts (:func:`invalid_to_nan`)."""
  if loss.loss == "cross_entropy":
    num_out = z.shape[-1]
    valid = (targets >= 0) & (targets < num_out)
    classes = jnp.clip(targets, 0, num_out - 1)[..., None]             # [T, B, 1]
    log_probs = jax.nn.log_softmax(z, axis=-1)                          # [T, B, O]
    picked = -jnp.take_along_axis(log_probs, classes, axis=-1)[..., 0]
    return invalid_to_nan(picked, valid)
  y = output_activation(model, z)
  return jnp.sum((y - targets) ** 2, axis=-1)


def weighted_sum(weights: jax.Array, losses: jax.Array) -> jax.Array:
  """``sum_t w_t L_t`` where a zero weight drops its term whatever it holds (even NaN)."""
  return jnp.sum(jnp.where(weights != 0, weights * losses, 0))


def logits(params: RNNParams, batch: Batch, problem: Problem, model: ModelSpec,
           compute: ComputeSpec) -> tuple[jax.Array, jax.Array]:
  """``(z [T, B, O], final [L*D, B, H])``: the forward body and the read-out on checked inputs."""
  trace = forward(params, batch.xs, problem.h0, problem.mask, model, compute, problem.masks)
  with precision_scope(compute):
    return output_logits(params, trace.top), trace.final


def to_chunks(x: jax.Array, chunk_size: int) -> jax.Array:
  """``[T, ...] -> [ceil(T / k), k, ...]``, the time axis zero-padded to a multiple of ``k``."""
  padded = -(-x.shape[0] // chunk_size) * chunk_size
  x = jnp.pad(x, [(0, padded - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((padded // chunk_size, chunk_size) + x.shape[1:])


def chunked_loss(params: RNNParams, batch: Batch, problem: Problem, model: ModelSpec,
                 loss: LossSpec, compute: ComputeSpec, chunk_size: int,
                 keep_states: bool = False) -> tuple[jax.Array, jax.Array]:
  """``(L, final)`` with each chunk of ``k = chunk_size`` steps rematerialised.

  A ``lax.scan`` over chunks carries every layer's state; each chunk's
  forward, read-out and loss run under ``jax.checkpoint``, so memory is
  ``~T/k + k`` for one extra forward pass. ``T`` is padded to a multiple of
  ``k`` with frozen, zero-weight steps; the dropout masks are the whole
  sequence's, so the numbers are the unchunked loss's.

  ``keep_states`` (for ``compute.gradient="fused"``): the checkpoint keeps
  every layer's states (the :data:`jaxrnn.recurrence.STATES` of
  :func:`jaxrnn.recurrence.fused_layer`) and recomputes only the read-out and
  the loss: no extra forward pass, memory ``~T`` states ``+ k``, and the
  backward pass forms ``dL/dh_t`` and runs the ``delta`` recursion one chunk
  at a time.
  """
  num_steps, size = batch.xs.shape[:2]
  mask = problem.mask
  if mask is None and num_steps % chunk_size:
    mask = jnp.ones((num_steps, size), batch.xs.dtype)
  masks = problem.masks
  between = None if masks is None else masks.between
  sequences = (batch.xs, batch.targets, problem.weights, mask, between)
  chunks = jax.tree.map(lambda x: to_chunks(x, chunk_size), sequences)
  inner = dataclasses.replace(compute, checkpoint_every=None)

  policy = jax.checkpoint_policies.save_only_these_names(STATES) if keep_states else None

  @functools.partial(jax.checkpoint, policy=policy)
  def chunk_loss(h, chunk):
    xs_c, targets_c, weights_c, mask_c, between_c = chunk                # [k, B, ...]
    masks_c = None if masks is None else masks._replace(between=between_c)
    part = Problem(h, mask_c, weights_c, masks_c)
    z, final = logits(params, Batch(xs_c), part, model, inner)          # [k, B, O]
    return final, weighted_sum(weights_c, step_losses(z, targets_c, model, loss))

  final, losses = jax.lax.scan(chunk_loss, problem.h0, chunks)          # [T / k]
  return jnp.sum(losses), final


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def loss_body(params: RNNParams, batch: Batch, problem: Problem, model: ModelSpec,
              loss: LossSpec, compute: ComputeSpec) -> tuple[jax.Array, jax.Array]:
  """``(L, final)`` on checked inputs: the one loss body of every path (split, chunked, TBPTT),
  chunked as :func:`jaxrnn.spec.resolve_checkpoint` decides, or, where every state is stored,
  as :func:`jaxrnn.spec.fused_chunk` does (keeping the states)."""
  num_steps, size = batch.xs.shape[:2]
  shape = shape_of(params)
  chunk_size = resolve_checkpoint(compute, shape, num_steps, size,
                                  jnp.dtype(compute.dtype or params.W_hy.dtype).itemsize)
  if chunk_size is not None:
    return chunked_loss(params, batch, problem, model, loss, compute, chunk_size)
  stored_chunk = fused_chunk(shape, num_steps, compute.gradient)
  if stored_chunk is not None:
    return chunked_loss(params, batch, problem, model, loss, compute, stored_chunk,
                        keep_states=True)
  z, final = logits(params, batch, problem, model, compute)              # [T, B, O]
  return weighted_sum(problem.weights, step_losses(z, batch.targets, model, loss)), final


def sequence_loss(params: RNNParams, batch: Batch, h0: jax.Array | None = None, *,
                  model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec(),
                  compute: ComputeSpec = ComputeSpec(),
                  key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``L = sum_t w_t L_t(y_t, target_t)`` over a batch, and the final states.

  Its ``jax.grad`` (``has_aux=True``) is the gradient the library trains
  with: with ``compute.gradient="fused"`` (the default) each layer's chain
  differentiates by the hand-derived BPTT, otherwise by ``lax.scan``'s own.

  Args:
    params: :class:`jaxrnn.RNNParams`.
    batch: :class:`jaxrnn.Batch` (``xs [T, B, I]``, ``targets``, optional
      ``lengths [B]`` and ``target_mask [T, B]``).
    h0: ``[L*D, B, H]`` initial states, or ``None`` for zeros.
    model, loss, compute: the specs.
    key: a ``jax.random`` key for dropout; ``None`` applies none.

  Returns:
    ``(L, final [L*D, B, H])``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> batch = jaxrnn.Batch(jax.random.normal(jax.random.key(1), (6, 4, 3)),  # xs [T, B, I]
    ...                      jnp.ones((6, 4), int))                         # targets [T, B]
    >>> value, final = jaxrnn.sequence_loss(params, batch)
    >>> value.shape, final.shape
    ((), (1, 4, 5))
    >>> grads, final = jax.grad(jaxrnn.sequence_loss, has_aux=True)(params, batch)
    >>> grads.W_hy.shape
    (2, 5)
  """
  problem = prepare(params, batch, h0, key, model, loss, compute)
  return loss_body(params, batch, problem, model, loss, compute)
