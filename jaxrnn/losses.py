"""Sequence losses ``L = sum_t L_t(y_t, target_t)``.

* ``"cross_entropy"``: ``L_t = -log softmax(z_t)[target_t]`` for integer class
  targets ``[T, B]``, where ``z_t = W_hy h_t + b_y``. The output activation
  must be ``"identity"`` (``y_t`` are logits) or ``"softmax"`` (``y_t`` are the
  probabilities); the loss is computed from ``z_t`` either way, stably.
* ``"squared_error"``: ``L_t = sum_o (y_t - target_t)_o^2`` for real targets
  ``[T, B, O]``, with any output activation.

Masked steps (past a sequence's length) contribute nothing, and neither do
steps outside an optional ``target_mask [T, B]`` (for tasks with a target at
some steps only, e.g. many-to-one classification). ``reduction``
``"sum"`` is the seed's ``L = sum_t L_t`` (summed over the batch too);
``"mean"`` divides by the number of live ``(t, b)`` steps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _checks
from jaxrnn.cell import OUTPUT_ACTIVATIONS, output_logits
from jaxrnn.init import RNNParams
from jaxrnn.memory import checkpointed_loss
from jaxrnn.unroll import SequenceInputs, check_inputs, hidden_states

LOSSES: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("identity", "softmax"),
    "squared_error": tuple(OUTPUT_ACTIVATIONS),
}
REDUCTIONS = ("sum", "mean")


def loss_weights(mask: jax.Array | None, shape: tuple[int, int], reduction: str,
                 dtype: jnp.dtype) -> jax.Array:
  """Weight of each ``L_t`` in ``L``: the mask, divided by the token count for ``"mean"``.

  Returns ``[T, B]``: ``m_t`` for ``reduction="sum"``, ``m_t / sum(m)`` for
  ``"mean"`` (an all-zero mask gives zero weights, not NaN).
  """
  weights = jnp.ones(shape, dtype) if mask is None else mask.astype(dtype)
  if reduction == "mean":
    weights = weights / jnp.maximum(weights.sum(), 1)
  return weights


def check_loss_inputs(params: RNNParams, xs: jax.Array, targets: jax.Array, loss: str,
                      lengths: jax.Array | None, h0: jax.Array | None, activation: str,
                      output_activation: str, reduction: str,
                      target_mask: jax.Array | None) -> tuple[SequenceInputs, jax.Array]:
  """Validates the arguments shared by :func:`sequence_loss` and :func:`jaxrnn.bptt`.

  Returns:
    ``(inputs, weights)``: the checked :class:`SequenceInputs` and the weight
    ``w_t`` of each ``L_t`` in ``L`` (``[T, B]``, from the length mask, the
    ``target_mask`` and the ``reduction``).

  Raises:
    ValueError: anything :func:`jaxrnn.unroll.check_inputs` rejects, an unknown
      ``loss``/``reduction``/``output_activation``, an output activation the
      loss does not accept, ``targets`` of the wrong shape, or class targets
      outside ``[0, O)`` on a live step, or a ``target_mask`` not shaped ``[T, B]``.
    TypeError: class targets that are not integers, or real targets whose
      dtype differs from the params'.
  """
  _checks.check_choice("loss", loss, LOSSES)
  _checks.check_choice("reduction", reduction, REDUCTIONS)
  _checks.check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
  if output_activation not in LOSSES[loss]:
    raise ValueError(f"loss {loss!r} does not accept output_activation {output_activation!r}; "
                     f"use one of {list(LOSSES[loss])}")
  inputs = check_inputs(params, xs, h0, lengths, activation)
  num_steps, batch = jnp.shape(xs)[:2]
  num_out = params.W_hy.shape[0]
  if loss == "cross_entropy":
    _checks.check_rank("targets", targets, 2, "[T, B] (class indices)")
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
      raise TypeError(f"cross_entropy targets must be integer class indices, "
                      f"got dtype {jnp.result_type(targets)}")
  else:
    _checks.check_rank("targets", targets, 3, "[T, B, O]")
    _checks.check_size("targets", targets, 2, num_out, "the output size O of params.W_hy")
    _checks.check_same_dtype("targets", targets, params.W_hh.dtype, "params")
  _checks.check_size("targets", targets, 0, num_steps, "the number of steps T of xs")
  _checks.check_size("targets", targets, 1, batch, "the batch size B of xs")
  mask = inputs.mask
  if target_mask is not None:
    _checks.check_rank("target_mask", target_mask, 2, "[T, B]")
    _checks.check_size("target_mask", target_mask, 0, num_steps, "the number of steps T of xs")
    _checks.check_size("target_mask", target_mask, 1, batch, "the batch size B of xs")
    target_mask = jnp.asarray(target_mask, params.W_hh.dtype)
    mask = target_mask if mask is None else mask * target_mask
  weights = loss_weights(mask, (num_steps, batch), reduction, params.W_hh.dtype)
  if not any(isinstance(a, jax.core.Tracer) for a in (targets, weights)):
    live = np.asarray(weights) != 0
    values = np.asarray(targets)
    if loss == "cross_entropy" and np.any(live & ((values < 0) | (values >= num_out))):
      raise ValueError(f"targets must be class indices in [0, {num_out}) on every live step")
    if loss == "squared_error" and not np.all(np.isfinite(values)):
      raise ValueError("targets contains NaN or inf")
  return inputs, weights


def step_losses(z: jax.Array, targets: jax.Array, loss: str,
                output_activation: str) -> jax.Array:
  """``L_t(y_t, target_t)`` for every step and sequence, from ``z_t = W_hy h_t + b_y``.

  Args:
    z: output pre-activations, ``[T, B, O]``.
    targets: ``[T, B]`` class indices (cross-entropy) or ``[T, B, O]`` values.
    loss: a key of :data:`LOSSES`.
    output_activation: the ``out_act`` with ``y_t = out_act(z_t)``.

  Returns:
    ``[T, B]`` losses, unmasked.
  """
  if loss == "cross_entropy":
    classes = jnp.clip(targets, 0, z.shape[-1] - 1)[..., None]          # [T, B, 1]
    log_probs = jax.nn.log_softmax(z, axis=-1)                          # [T, B, O]
    return -jnp.take_along_axis(log_probs, classes, axis=-1)[..., 0]
  y = OUTPUT_ACTIVATIONS[output_activation](z)
  return jnp.sum((y - targets) ** 2, axis=-1)


def sequence_loss(params: RNNParams, xs: jax.Array, targets: jax.Array,
                  loss: str = "cross_entropy", lengths: jax.Array | None = None,
                  h0: jax.Array | None = None, activation: str = "tanh",
                  output_activation: str = "identity", reduction: str = "sum",
                  target_mask: jax.Array | None = None, backward: str = "fused",
                  scan_unroll: int = 1, checkpoint_every: int | None = None) -> jax.Array:
  """``L = sum_t L_t(y_t, target_t)`` over a batch of sequences.

  ``jax.grad`` of this function is the gradient the library trains with; with
  ``backward="fused"`` (the default) its recurrent part is the hand-derived
  BPTT of :mod:`jaxrnn.bptt`, with ``"autodiff"`` it is ``lax.scan``'s own.

  Args:
    params: :class:`RNNParams`.
    xs: ``[T, B, I]``.
    targets: ``[T, B]`` integer classes (cross-entropy) or ``[T, B, O]`` values.
    loss: ``"cross_entropy"`` or ``"squared_error"``.
    lengths: ``[B]`` sequence lengths, or ``None``.
    h0: ``[B, H]`` initial state, or ``None`` for zeros.
    activation: ``"tanh"`` or ``"relu"``.
    output_activation: see :data:`LOSSES` for what each loss accepts.
    reduction: ``"sum"`` or ``"mean"`` (over live steps).
    target_mask: ``[T, B]``, 1 where a step has a target; ``None`` for all.
    backward: ``"fused"`` or ``"autodiff"``.
    scan_unroll: steps per ``lax.scan`` iteration.
    checkpoint_every: ``None``, or a chunk length ``k``: keep only every
      ``k``-th hidden state and recompute the rest in the backward pass
      (:func:`jaxrnn.memory.checkpointed_loss`; memory ``~T/k + k``).

  Returns:
    The scalar loss.
  """
  inputs, weights = check_loss_inputs(params, xs, targets, loss, lengths, h0, activation,
                                      output_activation, reduction, target_mask)  # w [T, B]
  if checkpoint_every is not None:
    losses = functools.partial(step_losses, loss=loss, output_activation=output_activation)
    return checkpointed_loss(params, xs, targets, weights, inputs, activation, losses,
                             checkpoint_every, backward, scan_unroll)
  hs = hidden_states(params, xs, inputs, activation, backward=backward,
                     scan_unroll=scan_unroll)                           # [T, B, H]
  z = output_logits(params, hs)                                         # [T, B, O]
  return jnp.sum(weights * step_losses(z, targets, loss, output_activation))
