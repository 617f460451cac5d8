"""Training with optax: jit-compiled train and eval steps, and a ``fit`` loop.

A train step is ``(params, opt_state, batch) -> (params, opt_state, metrics)``:
pure, compiled once, with ``params`` and ``opt_state`` donated so XLA updates
them in place. Any ``optax.GradientTransformation`` works; :func:`make_optimizer`
builds the usual "clip by global norm, then Adam/SGD/..." chain.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxrnn import _checks
from jaxrnn.bptt import bptt
from jaxrnn.cell import OUTPUT_ACTIVATIONS, output_logits
from jaxrnn.init import RNNParams
from jaxrnn.losses import check_loss_inputs, sequence_loss, step_losses
from jaxrnn.unroll import hidden_states

GRADIENTS = ("fused", "autodiff", "bptt")
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
    "rmsprop": optax.rmsprop,
    "adagrad": optax.adagrad,
}

Metrics = dict[str, jax.Array]


class Batch(NamedTuple):
  """One batch of sequences, time-major.

  Attributes:
    xs: inputs, ``[T, B, I]``.
    targets: ``[T, B]`` integer classes or ``[T, B, O]`` values.
    lengths: ``[B]`` sequence lengths, or ``None`` (all ``T``).
    target_mask: ``[T, B]``, 1 on the steps that have a target, or ``None`` (all).
  """
  xs: jax.Array
  targets: jax.Array
  lengths: jax.Array | None = None
  target_mask: jax.Array | None = None


class LossSpec(NamedTuple):
  """What the model computes and what it is trained to minimise (static, hashable)."""
  loss: str = "cross_entropy"
  activation: str = "tanh"
  output_activation: str = "identity"
  reduction: str = "mean"


def make_optimizer(name: str = "adam", learning_rate: float = 1e-3,
                   clip_norm: float | None = None, **kwargs: Any) -> optax.GradientTransformation:
  """``optax.chain(clip_by_global_norm(clip_norm), <name>(learning_rate, **kwargs))``.

  Gradient clipping by global norm is Pascanu, Mikolov & Bengio (2013), the
  standard remedy for the exploding gradients of :mod:`jaxrnn.diagnostics`.

  Args:
    name: a key of :data:`OPTIMIZERS`.
    learning_rate: a float or an ``optax`` schedule.
    clip_norm: clip the global gradient norm to this; ``None`` for no clipping.
    **kwargs: passed to the optimizer (e.g. ``momentum`` for SGD).

  Returns:
    An ``optax.GradientTransformation``.
  """
  _checks.check_choice("optimizer", name, OPTIMIZERS)
  optimizer = OPTIMIZERS[name](learning_rate, **kwargs)
  if clip_norm is None:
    return optimizer
  if not clip_norm > 0:
    raise ValueError(f"clip_norm must be positive, got {clip_norm!r}")
  return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


def loss_and_grad(params: RNNParams, batch: Batch, spec: LossSpec,
                  gradient: str = "fused") -> tuple[jax.Array, RNNParams]:
  """The loss of ``batch`` and its gradient with respect to ``params``.

  ``gradient`` picks how: ``"fused"`` is ``jax.grad`` through the hand-derived
  BPTT (fast), ``"autodiff"`` is ``jax.grad`` through ``lax.scan``, ``"bptt"``
  calls :func:`jaxrnn.bptt` directly. All three give the same numbers.
  """
  _checks.check_choice("gradient", gradient, GRADIENTS)
  kwargs = dict(spec._asdict(), lengths=batch.lengths, target_mask=batch.target_mask)
  if gradient == "bptt":
    grads, _ = bptt(params, batch.xs, batch.targets, **kwargs)
    return sequence_loss(params, batch.xs, batch.targets, backward="autodiff", **kwargs), grads
  return jax.value_and_grad(sequence_loss)(params, batch.xs, batch.targets, backward=gradient,
                                           **kwargs)


def make_train_step(optimizer: optax.GradientTransformation, spec: LossSpec = LossSpec(),
                    gradient: str = "fused", donate: bool = True,
                    ) -> Callable[[RNNParams, Any, Batch], tuple[RNNParams, Any, Metrics]]:
  """Builds a jit-compiled step ``(params, opt_state, batch) -> (params, opt_state, metrics)``.

  Args:
    optimizer: any ``optax.GradientTransformation``.
    spec: the :class:`LossSpec` (loss, activations, reduction).
    gradient: ``"fused"``, ``"autodiff"`` or ``"bptt"`` (see :func:`loss_and_grad`).
    donate: donate ``params`` and ``opt_state`` buffers to the step; the
      arrays passed in must not be used after the call.

  Returns:
    The compiled step. ``metrics`` holds ``loss`` (before the update) and
    ``grad_norm`` (global norm, before clipping).

  Example:
    >>> step = jaxrnn.make_train_step(jaxrnn.make_optimizer("adam", 1e-2, clip_norm=1.0))
    >>> params, opt_state, metrics = step(params, opt_state, batch)
  """
  _checks.check_choice("gradient", gradient, GRADIENTS)
  return compile_step(optimizer, functools.partial(loss_and_grad, spec=spec, gradient=gradient),
                      donate)


def compile_step(optimizer: optax.GradientTransformation,
                 value_and_grad: Callable[[RNNParams, Batch], tuple[jax.Array, RNNParams]],
                 donate: bool = True,
                 ) -> Callable[[RNNParams, Any, Batch], tuple[RNNParams, Any, Metrics]]:
  """``jax.jit`` of one optimizer step around ``value_and_grad(params, batch) -> (loss, grads)``.

  The step is ``(params, opt_state, batch) -> (params, opt_state, metrics)``
  with ``metrics = {"loss", "grad_norm"}``; ``donate`` donates ``params`` and
  ``opt_state``.
  """
  def step(params, opt_state, batch):
    loss, grads = value_and_grad(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def evaluate(params: RNNParams, batch: Batch, spec: LossSpec = LossSpec()) -> Metrics:
  """Loss and a task metric on ``batch``, over the steps that have a target.

  Returns:
    ``{"loss": L}`` plus ``"accuracy"`` (cross-entropy: fraction of live
    steps whose arg-max output is the target) or ``"mse"`` (squared error:
    mean over live steps and outputs of ``(y_t - target_t)^2``).
  """
  inputs, weights = check_loss_inputs(params, batch.xs, batch.targets, spec.loss, batch.lengths,
                                      None, spec.activation, spec.output_activation,
                                      spec.reduction, batch.target_mask)  # w [T, B]
  z = output_logits(params, hidden_states(params, batch.xs, inputs, spec.activation))  # [T, B, O]
  loss = jnp.sum(weights * step_losses(z, batch.targets, spec.loss, spec.output_activation))
  live = (weights != 0).astype(weights.dtype)                           # [T, B]
  count = jnp.maximum(live.sum(), 1)
  if spec.loss == "cross_entropy":
    hits = (jnp.argmax(z, axis=-1) == batch.targets).astype(live.dtype)
    return {"loss": loss, "accuracy": jnp.sum(live * hits) / count}
  y = OUTPUT_ACTIVATIONS[spec.output_activation](z)
  squared = jnp.mean((y - batch.targets) ** 2, axis=-1)
  return {"loss": loss, "mse": jnp.sum(live * squared) / count}


def make_eval_step(spec: LossSpec = LossSpec()) -> Callable[[RNNParams, Batch], Metrics]:
  """``jax.jit`` of :func:`evaluate` for a fixed ``spec``: ``(params, batch) -> metrics``."""
  return jax.jit(functools.partial(evaluate, spec=spec))


class FitResult(NamedTuple):
  """What :func:`fit` returns: final ``params``, ``opt_state`` and per-step metrics."""
  params: RNNParams
  opt_state: Any
  history: dict[str, np.ndarray]


def fit(params: RNNParams, optimizer: optax.GradientTransformation,
        batches: Callable[[int], Batch], num_steps: int, spec: LossSpec = LossSpec(),
        gradient: str = "fused", opt_state: Any = None, start_step: int = 0,
        progress: bool = True,
        callback: Callable[[int, RNNParams, Any, dict[str, float]], None] | None = None,
        sequences_per_step: int | None = None) -> FitResult:
  """Trains for ``num_steps`` steps with a progress bar that shows the loss.

  Args:
    params: initial :class:`RNNParams` (not modified; buffers are copied).
    optimizer: any ``optax.GradientTransformation``.
    batches: ``step -> Batch``; indexing by step (not an iterator) makes a run
      reproducible and resumable from any step.
    num_steps: number of steps to run.
    spec: the :class:`LossSpec`.
    gradient: ``"fused"``, ``"autodiff"`` or ``"bptt"``.
    opt_state: optimizer state to resume from; ``optimizer.init(params)`` if ``None``.
    start_step: index of the first step (for resuming).
    progress: show a tqdm progress bar.
    callback: called after every step as ``callback(step, params, opt_state, metrics)``.
    sequences_per_step: the batch size; when given, the progress bar also shows sequences/s.

  Returns:
    :class:`FitResult` with ``history["loss"]`` and ``history["grad_norm"]`` of length ``num_steps``.

  Raises:
    FloatingPointError: the loss or gradient became NaN/inf; the message names the step.
  """
  params = jax.tree.map(jnp.copy, params)
  opt_state = optimizer.init(params) if opt_state is None else jax.tree.map(jnp.copy, opt_state)
  train_step = make_train_step(optimizer, spec, gradient)
  history: dict[str, list[float]] = {"loss": [], "grad_norm": []}
  bar = tqdm(range(start_step, start_step + num_steps), disable=not progress, unit="step")
  for step in bar:
    params, opt_state, metrics = train_step(params, opt_state, batches(step))
    values = {k: float(v) for k, v in metrics.items()}
    if not all(np.isfinite(v) for v in values.values()):
      raise FloatingPointError(f"non-finite training metrics at step {step}: {values}")
    for k, v in values.items():
      history[k].append(v)
    postfix = {"loss": f"{values['loss']:.4f}"}
    if sequences_per_step and bar.format_dict["rate"]:
      postfix["seq/s"] = f"{bar.format_dict['rate'] * sequences_per_step:.0f}"
    bar.set_postfix(postfix)
    if callback is not None:
      callback(step, params, opt_state, values)
  return FitResult(params, opt_state, {k: np.asarray(v) for k, v in history.items()})
