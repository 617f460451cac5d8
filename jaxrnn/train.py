"""Training with optax: jit-compiled train and eval steps, and a ``fit`` loop, for every model.

A train step is ``(params, opt_state, batch, key) -> (params, opt_state, metrics)``:
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

from jaxrnn import checks
from jaxrnn.bptt import bptt
from jaxrnn.cell import OUTPUT_ACTIVATIONS
from jaxrnn.data import Batch
from jaxrnn.losses import check_problem, logits, sequence_loss, step_losses, weighted_sum
from jaxrnn.params import RNNParams
from jaxrnn.spec import ComputeSpec, LossSpec, ModelSpec

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
    "rmsprop": optax.rmsprop,
    "adagrad": optax.adagrad,
}

Metrics = dict[str, jax.Array]
Step = Callable[..., tuple[RNNParams, Any, Metrics]]


def make_optimizer(name: str = "adam", learning_rate: float = 1e-3,
                   clip_norm: float | None = None, **kwargs: Any) -> optax.GradientTransformation:
  """``optax.chain(clip_by_global_norm(clip_norm), <name>(learning_rate, **kwargs))``.

  Gradient clipping by global norm is Pascanu, Mikolov & Bengio (2013), the
  standard remedy for the exploding gradients of :mod:`jaxrnn.diagnostics`.

  Args:
    name: a key of :data:`OPTIMIZERS`.
    learning_rate: a finite float ``> 0`` or an ``optax`` schedule.
    clip_norm: clip the global gradient norm to this (``> 0``); ``None`` for no clipping
      stage, ``inf`` for a stage that never clips (so the optimizer state has
      the same structure as with a finite ``clip_norm``).
    **kwargs: passed to the optimizer (e.g. ``momentum`` for SGD).

  Returns:
    An ``optax.GradientTransformation``.
  """
  checks.check_choice("optimizer", name, OPTIMIZERS)
  if not callable(learning_rate):
    checks.check_positive_number("learning_rate", learning_rate)
  optimizer = OPTIMIZERS[name](learning_rate, **kwargs)
  if clip_norm is None:
    return optimizer
  if clip_norm != float("inf"):
    checks.check_positive_number("clip_norm", clip_norm)
  return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


def loss_and_grad(params: RNNParams, batch: Batch, *, model: ModelSpec = ModelSpec(),
                  loss: LossSpec = LossSpec(), compute: ComputeSpec = ComputeSpec(),
                  key: jax.Array | None = None) -> tuple[jax.Array, RNNParams]:
  """The loss of ``batch`` and its gradient with respect to ``params``.

  ``compute.gradient`` picks how: ``"fused"`` is ``jax.grad`` through the
  hand-derived BPTT (fast), ``"autodiff"`` is ``jax.grad`` through
  ``lax.scan``, ``"bptt"`` calls :func:`jaxrnn.bptt` directly (no dropout,
  ``checkpoint_every`` or compute ``dtype``). All give the same numbers.
  """
  kwargs = dict(model=model, loss=loss, compute=compute, key=key)
  if compute.gradient == "bptt":
    if key is not None or compute.checkpoint_every is not None or compute.dtype is not None:
      raise ValueError("compute.gradient='bptt' is the plain hand-derived oracle: it takes no "
                       "dropout key, checkpoint_every or compute dtype")
    grads, _ = bptt(params, batch, model=model, loss=loss)
    return sequence_loss(params, batch, **kwargs)[0], grads
  (value, _), grads = jax.value_and_grad(sequence_loss, has_aux=True)(params, batch, **kwargs)
  return value, grads


def compile_step(optimizer: optax.GradientTransformation,
                 value_and_grad: Callable[[RNNParams, Batch, Any], tuple[jax.Array, RNNParams]],
                 donate: bool = True, place: Callable[..., tuple[Any, ...]] | None = None) -> Step:
  """``jax.jit`` of one optimizer step around ``value_and_grad(params, batch, key) -> (loss, grads)``.

  The step is ``(params, opt_state, batch, key=None) -> (params, opt_state, metrics)``
  with ``metrics = {"loss", "grad_norm", "param_max"}``: the loss and the
  gradient's global norm before the update, and the largest ``|p|`` of the
  updated parameters (NaN or inf exactly when an update produced one);
  ``donate`` donates ``params`` and ``opt_state``; ``place(params,
  opt_state, batch, key)``, if given, puts the arguments where the compiled
  step wants them (e.g. replicated over a mesh) before each call.
  """
  def step(params, opt_state, batch, key=None):
    value, grads = value_and_grad(params, batch, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    param_max = jnp.max(jnp.stack([jnp.max(jnp.abs(p)) for p in jax.tree.leaves(params)]))
    return params, opt_state, {"loss": value, "grad_norm": optax.tree.norm(grads),
                               "param_max": param_max}

  compiled = jax.jit(step, donate_argnums=(0, 1) if donate else ())
  expected: dict[Any, Any] = {}

  def checked_step(params, opt_state, batch, key=None):
    layout = shapes_of(params)
    if layout not in expected:
      checks.check_params(params)
      expected[layout] = shapes_of(jax.eval_shape(optimizer.init, params))
    if shapes_of(opt_state) != expected[layout]:
      raise ValueError("opt_state does not fit params: its tree or shapes differ from "
                       "optimizer.init(params)'s (another optimizer or another model?)")
    if place is not None:
      params, opt_state, batch, key = place(params, opt_state, batch, key)
    return compiled(params, opt_state, batch, key)

  return checked_step


def shapes_of(tree: Any) -> tuple[Any, tuple[tuple[int, ...], ...]]:
  """The tree structure of ``tree`` and the shape of each leaf: what a compiled step fixes."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(tuple(jnp.shape(leaf)) for leaf in leaves)


def make_train_step(optimizer: optax.GradientTransformation, *, model: ModelSpec = ModelSpec(),
                    loss: LossSpec = LossSpec(), compute: ComputeSpec = ComputeSpec(),
                    donate: bool = True, mesh: Any = None) -> Step:
  """Builds a jit-compiled step ``(params, opt_state, batch, key=None) -> (params, opt_state, metrics)``.

  Args:
    optimizer: any ``optax.GradientTransformation``.
    model, loss, compute: the static specs (see :func:`jaxrnn.sequence_loss`).
    donate: donate ``params`` and ``opt_state`` buffers to the step; the
      arrays passed in must not be used after the call.
    mesh: ``None`` (one device), or a ``jax.sharding.Mesh`` / device count to
      split the batch over (:func:`jaxrnn.parallel.make_parallel_train_step`:
      parameters replicated, one ``psum`` of the gradients, the same numbers
      to float rounding; ``B`` divisible by the device count).

  Returns:
    The compiled step (see :func:`compile_step` for ``metrics``). Pass a
    ``key`` (a fresh one per step) to apply the model's dropout.

  Example:
    >>> step = jaxrnn.make_train_step(jaxrnn.make_optimizer("adam", 1e-2, clip_norm=1.0))
    >>> params, opt_state, metrics = step(params, opt_state, batch)
  """
  if mesh is not None:
    from jaxrnn.parallel import make_parallel_train_step  # pylint: disable=import-outside-toplevel
    return make_parallel_train_step(optimizer, model=model, loss=loss, compute=compute,
                                    mesh=mesh, donate=donate)
  checks.check_model(model)
  checks.check_loss_spec(loss, model)
  checks.check_compute(compute)
  value_and_grad = lambda params, batch, key: loss_and_grad(
      params, batch, model=model, loss=loss, compute=compute, key=key)
  return compile_step(optimizer, value_and_grad, donate)


def evaluation_sums(params: RNNParams, batch: Batch, *, model: ModelSpec = ModelSpec(),
                    loss: LossSpec = LossSpec()) -> Metrics:
  """What :func:`evaluate` adds up over a batch; sums of shards add up to the whole batch's.

  Returns:
    ``{"loss": sum_t w_t L_t`` (unnormalised weights), ``"weight": sum_t w_t``,
    ``"live"``: live steps, ``"score"``: hits (cross-entropy) or per-step mean
    squared errors (squared error) summed over live steps``}``.
  """
  compute = ComputeSpec(gradient="autodiff")
  problem = check_problem(params, batch, None, None, model, loss._replace(reduction="sum"),
                          compute)
  z, _ = logits(params, batch, problem, model, compute)                  # [T, B, O]
  value = weighted_sum(problem.weights,
                       step_losses(z, batch.targets, loss.loss, model.output_activation))
  live = (problem.weights != 0).astype(z.dtype)                          # [T, B]
  if loss.loss == "cross_entropy":
    score = (jnp.argmax(z, axis=-1) == batch.targets).astype(z.dtype)
  else:
    y = OUTPUT_ACTIVATIONS[model.output_activation](z)
    score = jnp.mean((y - batch.targets) ** 2, axis=-1)
  return {"loss": value, "weight": problem.weights.sum(), "live": live.sum(),
          "score": jnp.sum(live * score)}


def metrics_of(sums: Metrics, loss: LossSpec) -> Metrics:
  """The metrics of :func:`evaluate` from :func:`evaluation_sums` (of a batch or of all its shards)."""
  value = sums["loss"] / jnp.maximum(sums["weight"], 1) if loss.reduction == "mean" else sums["loss"]
  name = "accuracy" if loss.loss == "cross_entropy" else "mse"
  return {"loss": value, name: sums["score"] / jnp.maximum(sums["live"], 1)}


def evaluate(params: RNNParams, batch: Batch, *, model: ModelSpec = ModelSpec(),
             loss: LossSpec = LossSpec()) -> Metrics:
  """Loss and a task metric on ``batch``, over the steps that have a target (no dropout).

  Returns:
    ``{"loss": L}`` plus ``"accuracy"`` (cross-entropy: fraction of live
    steps whose arg-max output is the target) or ``"mse"`` (squared error:
    mean over live steps and outputs of ``(y_t - target_t)^2``).
  """
  return metrics_of(evaluation_sums(params, batch, model=model, loss=loss), loss)


def make_eval_step(*, model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec(),
                   mesh: Any = None) -> Callable[[RNNParams, Batch], Metrics]:
  """``jax.jit`` of :func:`evaluate` for fixed specs: ``(params, batch) -> metrics``.

  With ``mesh`` (a ``jax.sharding.Mesh`` or a device count) the batch is
  split over its devices (:func:`jaxrnn.parallel.parallel_evaluate`): the
  same metrics, ``B`` divisible by the device count.
  """
  if mesh is not None:
    from jaxrnn.parallel import make_parallel_eval_step  # pylint: disable=import-outside-toplevel
    return make_parallel_eval_step(model=model, loss=loss, mesh=mesh)
  return jax.jit(functools.partial(evaluate, model=model, loss=loss))


class FitResult(NamedTuple):
  """What :func:`fit` returns: final ``params``, ``opt_state`` and per-step metrics."""
  params: RNNParams
  opt_state: Any
  history: dict[str, np.ndarray]


def fit(params: RNNParams, optimizer: optax.GradientTransformation,
        batches: Callable[[int], Batch], num_steps: int, *, model: ModelSpec = ModelSpec(),
        loss: LossSpec = LossSpec(), compute: ComputeSpec = ComputeSpec(),
        key: jax.Array | None = None, opt_state: Any = None, start_step: int = 0,
        progress: bool = True,
        callback: Callable[[int, RNNParams, Any, dict[str, float]], None] | None = None,
        sequences_per_step: int | None = None, train_step: Step | None = None,
        mesh: Any = None) -> FitResult:
  """Trains for ``num_steps`` steps with a progress bar that shows the loss.

  Args:
    params: initial :class:`jaxrnn.RNNParams` (not modified; buffers are copied).
    optimizer: any ``optax.GradientTransformation``.
    batches: ``step -> Batch``; indexing by step (not an iterator) makes a run
      reproducible and resumable from any step.
    num_steps: number of steps to run, ``>= 0``.
    model, loss, compute: the static specs.
    key: a ``jax.random`` key for dropout; step ``s`` uses ``fold_in(key, s)``.
    opt_state: optimizer state to resume from; ``optimizer.init(params)`` if ``None``.
    start_step: index of the first step (for resuming).
    progress: show a tqdm progress bar.
    callback: called after every step as ``callback(step, params, opt_state, metrics)``.
    sequences_per_step: the batch size; when given, the progress bar also shows sequences/s.
    train_step: a step built by :func:`make_train_step` or
      :func:`jaxrnn.parallel.make_parallel_train_step` for the same specs;
      default ``make_train_step(optimizer, model=..., loss=..., compute=..., mesh=mesh)``.
    mesh: a ``jax.sharding.Mesh`` or device count to split each batch over
      (ignored when ``train_step`` is given); ``None``: one device. A batch
      on one device is split before each step; a jittable ``batches`` wrapped
      in :func:`jaxrnn.parallel.placed_batches` is born split instead.

  Returns:
    :class:`FitResult` with ``history["loss"]``, ``["grad_norm"]`` and
    ``["param_max"]``, each of length ``num_steps``.

  Raises:
    FloatingPointError: the loss, the gradient or the updated parameters
      became NaN/inf; the message names the step. ``callback`` is not called
      for that step, so nothing non-finite is ever handed on (e.g. saved).
  """
  if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 0:
    raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
  params = jax.tree.map(jnp.copy, params)
  opt_state = optimizer.init(params) if opt_state is None else jax.tree.map(jnp.copy, opt_state)
  if train_step is None:
    train_step = make_train_step(optimizer, model=model, loss=loss, compute=compute, mesh=mesh)
  history: dict[str, list[float]] = {"loss": [], "grad_norm": [], "param_max": []}
  bar = tqdm(range(start_step, start_step + num_steps), disable=not progress, unit="step")
  for step in bar:
    step_key = None if key is None else jax.random.fold_in(key, step)
    params, opt_state, metrics = train_step(params, opt_state, batches(step), step_key)
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
