"""Sequence losses ``L = sum_t w_t L_t(y_t, target_t)``, for every model.

* ``"cross_entropy"``: ``L_t = -log softmax(z_t)[target_t]`` for integer class
  targets ``[T, B]``, where ``z_t = W_hy x^L_t + b_y``; the output activation
  must be ``"identity"`` (``y_t`` are logits) or ``"softmax"`` (``y_t`` are the
  probabilities); the loss is computed from ``z_t`` either way, stably.
* ``"squared_error"``: ``L_t = sum_o (y_t - target_t)_o^2`` for real targets
  ``[T, B, O]``, with any output activation.

``w_t`` is 0 past a sequence's length and outside an optional ``target_mask``
(tasks with a target at some steps only); ``reduction="sum"`` is the seed's
``L = sum_t L_t`` (summed over the batch too), ``"mean"`` divides by the number
of live ``(t, b)`` steps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import checks
from jaxrnn.cell import OUTPUT_ACTIVATIONS, output_logits
from jaxrnn.data import Batch
from jaxrnn.dropout import DropoutMasks, draw_masks
from jaxrnn.params import RNNParams
from jaxrnn.recurrence import precision_scope
from jaxrnn.spec import ComputeSpec, LossSpec, ModelSpec
from jaxrnn.unroll import forward


class Problem(NamedTuple):
  """A checked batch, ready for the forward body.

  Attributes:
    h0: ``[L*D, B, H]``.
    mask: ``[T, B]`` from ``lengths``, or ``None``.
    weights: ``w_t`` of each ``L_t`` in ``L``, ``[T, B]``.
    masks: dropout masks, or ``None``.
  """
  h0: jax.Array
  mask: jax.Array | None
  weights: jax.Array
  masks: DropoutMasks | None


def loss_weights(mask: jax.Array | None, target_mask: jax.Array | None, shape: tuple[int, int],
                 reduction: str, dtype: jnp.dtype) -> jax.Array:
  """``w_t``: the length mask times ``target_mask``, over their count for ``"mean"``; ``[T, B]``.

  An all-zero mask gives zero weights, not NaN.
  """
  weights = jnp.ones(shape, dtype)
  for m in (mask, target_mask):
    if m is not None:
      weights = weights * jnp.asarray(m, dtype)
  if reduction == "mean":
    weights = weights / jnp.maximum(weights.sum(), 1)
  return weights


def check_problem(params: RNNParams, batch: Batch, h0: jax.Array | None, key: jax.Array | None,
                  model: ModelSpec, loss: LossSpec, compute: ComputeSpec) -> Problem:
  """Validates every argument of :func:`sequence_loss` (and :func:`jaxrnn.bptt`, :func:`jaxrnn.evaluate`).

  Raises:
    ValueError, TypeError: naming the argument (see :mod:`jaxrnn.checks`).
  """
  checks.check_type("batch", batch, Batch)
  shape, h0, mask = checks.check_inputs(params, batch.xs, h0, batch.lengths, "batch.xs")
  checks.check_model(model)
  checks.check_loss_spec(loss, model)
  checks.check_compute(compute, shape)
  dtype = params.W_hy.dtype
  checks.check_batch(batch, shape, dtype, loss)
  num_steps, size = jnp.shape(batch.xs)[:2]
  weights = loss_weights(mask, batch.target_mask, (num_steps, size), loss.reduction, dtype)
  masks = draw_masks(key, model, shape, num_steps, size, compute.dtype or dtype)
  return Problem(h0, mask, weights, masks)


def step_losses(z: jax.Array, targets: jax.Array, loss: str,
                output_activation: str) -> jax.Array:
  """``L_t(y_t, target_t)`` for every step and sequence, from ``z_t = W_hy x^L_t + b_y``.

  Args:
    z: output pre-activations, ``[T, B, O]``.
    targets: ``[T, B]`` class indices (cross-entropy) or ``[T, B, O]`` values.
    loss: ``"cross_entropy"`` or ``"squared_error"``.
    output_activation: the ``out_act`` with ``y_t = out_act(z_t)``.

  Returns:
    ``[T, B]`` losses, unweighted. A class index outside ``[0, O)`` (only
    possible on a zero-weight step, or under ``jit``) gives ``NaN``, never a
    plausible number.
  """
  if loss == "cross_entropy":
    num_out = z.shape[-1]
    valid = (targets >= 0) & (targets < num_out)
    classes = jnp.clip(targets, 0, num_out - 1)[..., None]             # [T, B, 1]
    log_probs = jax.nn.log_softmax(z, axis=-1)                          # [T, B, O]
    picked = -jnp.take_along_axis(log_probs, classes, axis=-1)[..., 0]
    return jnp.where(valid, picked, jnp.nan)
  y = OUTPUT_ACTIVATIONS[output_activation](z)
  return jnp.sum((y - targets) ** 2, axis=-1)


def weighted_sum(weights: jax.Array, losses: jax.Array) -> jax.Array:
  """``sum_t w_t L_t`` where a zero weight drops its term whatever it holds (even NaN)."""
  return jnp.sum(jnp.where(weights != 0, weights * losses, 0))


def logits(params: RNNParams, batch: Batch, problem: Problem, model: ModelSpec,
           compute: ComputeSpec) -> tuple[jax.Array, jax.Array]:
  """``(z [T, B, O], final [L*D, B, H])``: the forward body and the read-out on checked inputs."""
  trace = forward(params, batch.xs, problem.h0, problem.mask, model, compute, problem.masks)
  with precision_scope(compute.precision):
    return output_logits(params, trace.top), trace.final


def pad_steps(x: jax.Array, num_steps: int) -> jax.Array:
  """Zero-pads the leading (time) axis of ``x`` to ``num_steps``; ``[T, ...] -> [num_steps, ...]``."""
  return jnp.pad(x, [(0, num_steps - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def to_chunks(x: jax.Array, chunk_size: int) -> jax.Array:
  """``[T, ...] -> [T / chunk_size, chunk_size, ...]``."""
  return x.reshape((x.shape[0] // chunk_size, chunk_size) + x.shape[1:])


def chunked_loss(params: RNNParams, batch: Batch, problem: Problem, model: ModelSpec,
                 loss: LossSpec, compute: ComputeSpec) -> tuple[jax.Array, jax.Array]:
  """``(L, final)`` with each chunk of ``k = compute.checkpoint_every`` steps rematerialised.

  A ``lax.scan`` over chunks carries the states of every layer from one chunk
  to the next; each chunk runs the forward body, the read-out and its loss
  under ``jax.checkpoint``, so the forward pass keeps only ``T/k`` boundary
  states and the backward pass recomputes ``k`` steps at a time (memory
  ``~T/k + k``, one extra forward pass of compute). ``T`` is padded to a
  multiple of ``k`` with frozen, zero-weight steps, which change nothing.
  Dropout masks are drawn for the whole sequence first, so the numbers equal
  the unchunked loss's.
  """
  chunk_size = compute.checkpoint_every
  num_steps, size = batch.xs.shape[:2]
  padded = -(-num_steps // chunk_size) * chunk_size
  mask = problem.mask
  if mask is None and padded != num_steps:
    mask = jnp.ones((num_steps, size), batch.xs.dtype)
  masks = problem.masks
  between = None if masks is None else masks.between
  sequences = (batch.xs, batch.targets, problem.weights, mask, between)
  chunks = jax.tree.map(lambda x: to_chunks(pad_steps(x, padded), chunk_size), sequences)
  inner = compute._replace(checkpoint_every=None)

  @jax.checkpoint
  def chunk_loss(h, chunk):
    xs_c, targets_c, weights_c, mask_c, between_c = chunk                # [k, B, ...]
    masks_c = None if masks is None else masks._replace(between=between_c)
    trace = forward(params, xs_c, h, mask_c, model, inner, masks_c)
    with precision_scope(compute.precision):
      z = output_logits(params, trace.top)                               # [k, B, O]
    losses = step_losses(z, targets_c, loss.loss, model.output_activation)
    return trace.final, weighted_sum(weights_c, losses)

  final, losses = jax.lax.scan(chunk_loss, problem.h0, chunks)          # [T / k]
  return jnp.sum(losses), final


def sequence_loss(params: RNNParams, batch: Batch, h0: jax.Array | None = None, *,
                  model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec(),
                  compute: ComputeSpec = ComputeSpec(),
                  key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``L = sum_t w_t L_t(y_t, target_t)`` over a batch, and the final states.

  ``jax.grad`` of this function is the gradient the library trains with; with
  ``compute.gradient="fused"`` (the default) each layer's recurrent part is
  the hand-derived BPTT of :mod:`jaxrnn.bptt`, otherwise ``lax.scan``'s own.

  Args:
    params: :class:`jaxrnn.RNNParams`.
    batch: :class:`jaxrnn.Batch` (``xs [T, B, I]``, ``targets``, optional
      ``lengths [B]`` and ``target_mask [T, B]``).
    h0: ``[L*D, B, H]`` initial states, or ``None`` for zeros.
    model: :class:`jaxrnn.ModelSpec`.
    loss: :class:`jaxrnn.LossSpec`.
    compute: :class:`jaxrnn.ComputeSpec` (``checkpoint_every`` rematerialises).
    key: a ``jax.random`` key for dropout; ``None`` applies none.

  Returns:
    ``(L, final [L*D, B, H])``; differentiate with
    ``jax.grad(sequence_loss, has_aux=True)``.

  Example:
    >>> grads, final = jax.grad(jaxrnn.sequence_loss, has_aux=True)(params, batch)
  """
  problem = check_problem(params, batch, h0, key, model, loss, compute)
  if compute.checkpoint_every is not None:
    return chunked_loss(params, batch, problem, model, loss, compute)
  z, final = logits(params, batch, problem, model, compute)              # [T, B, O]
  losses = step_losses(z, batch.targets, loss.loss, model.output_activation)
  return weighted_sum(problem.weights, losses), final
