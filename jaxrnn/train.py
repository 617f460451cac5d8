"""Training with optax: jit-compiled train and eval steps, and a ``fit`` loop, for every model.

Any ``optax.GradientTransformation`` works; :func:`make_optimizer` builds the
usual "clip by global norm, then Adam/SGD/..." chain. ``mesh=`` splits the
batch over devices (:func:`jaxrnn.parallel.split`), the same numbers to rounding; its default
``"auto"`` splits over every local device where there are several and they divide the batch.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxrnn import checks, parallel
from jaxrnn.bptt import hand_gradients
from jaxrnn.cell import output_activation
from jaxrnn.losses import Problem, logits, loss_body, prepare, step_losses, weighted_sum
from jaxrnn.pytrees import Batch, RNNParams
from jaxrnn.spec import ComputeSpec, LossSpec, ModelSpec, check_specs

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
    "rmsprop": optax.rmsprop,
    "adagrad": optax.adagrad,
}

Metrics = dict[str, jax.Array]
Step = Callable[..., tuple[RNNParams, Any, Metrics]]


def check_optimizer(optimizer: Any) -> None:
  """``TypeError`` unless ``optimizer`` has optax's ``init`` and ``update`` (a step built with
  anything else would fail only when first called)."""
  if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update",
                                                                           None))):
    raise TypeError(f"optimizer must be an optax.GradientTransformation (e.g. "
                    f"jaxrnn.make_optimizer('adam')), got {type(optimizer).__name__}")


def make_optimizer(name: str = "adam", learning_rate: float = 1e-3,
                   clip_norm: float | None = None, **kwargs: Any) -> optax.GradientTransformation:
  """``optax.chain(clip_by_global_norm(clip_norm), <name>(learning_rate, **kwargs))``.

  Clipping the gradient's global norm (Pascanu, Mikolov & Bengio, 2013) is the
  standard remedy for exploding gradients; the clip acts before the optimizer.

  Args:
    name: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"`` or ``"adagrad"`` (the optax
      optimizer of that name).
    learning_rate: a finite float ``> 0`` or an ``optax`` schedule.
    clip_norm: the norm to clip to (``> 0``); ``None``: no clipping stage;
      ``inf``: a stage that never clips (the state keeps its structure).
    **kwargs: finite numbers passed to the optimizer (e.g. ``momentum``).

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> optimizer = jaxrnn.make_optimizer("sgd", 0.1, clip_norm=1.0, momentum=0.9)
    >>> grads = jax.tree.map(lambda p: jnp.full_like(p, 100.0), params)   # norm >> 1
    >>> updates, _ = optimizer.update(grads, optimizer.init(params))
    >>> round(float(optax.tree.norm(updates)), 4)    # clipped to norm 1, then times 0.1
    0.1
  """
  checks.check_choice("optimizer", name, OPTIMIZERS)
  if not callable(learning_rate):
    checks.check_real("learning_rate", learning_rate)
  for option, value in kwargs.items():
    if not isinstance(value, (bool, int, float, type(None))) or (
        isinstance(value, float) and not math.isfinite(value)):
      raise ValueError(f"{option} must be a finite number (or a bool), got {value!r}")
  try:
    optimizer = OPTIMIZERS[name](learning_rate, **kwargs)
  except TypeError as error:
    raise TypeError(f"optimizer {name!r}: {error}") from None
  if clip_norm is None:
    return optimizer
  if clip_norm != float("inf"):
    checks.check_real("clip_norm", clip_norm)
  return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def value_and_grad(params: RNNParams, batch: Batch, problem: Problem, model: ModelSpec,
                   loss: LossSpec, compute: ComputeSpec) -> tuple[tuple[jax.Array, RNNParams],
                                                                   jax.Array]:
  """``((L, dL/dparams), final)`` on checked inputs: ``jax.grad`` of the loss body
  (``compute.gradient`` ``"fused"`` or ``"autodiff"``) or :func:`jaxrnn.bptt`'s (``"bptt"``)."""
  if compute.gradient == "bptt":
    value, final = loss_body(params, batch, problem, model, loss, compute)
    return (value, hand_gradients(params, batch, problem, model, loss)[0]), final
  (value, final), grads = jax.value_and_grad(loss_body, has_aux=True)(
      params, batch, problem, model, loss, compute)
  return (value, grads), final


def loss_and_grad(params: RNNParams, batch: Batch, *, model: ModelSpec = ModelSpec(),
                  loss: LossSpec = LossSpec(), compute: ComputeSpec = ComputeSpec(),
                  key: jax.Array | None = None, mesh: Any = "auto") -> tuple[jax.Array, RNNParams]:
  """``(L, dL/dparams)`` of ``batch``; ``mesh`` (a ``Mesh``, a device count, ``"auto"``: every
  local device that divides ``B``, or ``None``: one device) splits the batch.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> batch = jaxrnn.Batch(jax.random.normal(jax.random.key(1), (6, 4, 3)),  # xs [T, B, I]
    ...                      jnp.ones((6, 4), int))                         # targets [T, B]
    >>> value, grads = jaxrnn.loss_and_grad(params, batch)
    >>> grads.layers[0][0].W_hh.shape
    (5, 5)
  """
  problem = prepare(params, batch, None, key, model, loss, compute)
  body = functools.partial(value_and_grad, model=model, loss=loss, compute=compute)
  return parallel.split(body, mesh)(params, batch, problem)[0]


def shapes_of(tree: Any) -> tuple[Any, tuple[tuple[int, ...], ...]]:
  """The tree structure of ``tree`` and the shape of each leaf: what a compiled step fixes."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(tuple(jnp.shape(leaf)) for leaf in leaves)


def opt_state_layout(optimizer: optax.GradientTransformation, params: RNNParams) -> Any:
  """:func:`shapes_of` ``optimizer.init(params)``, without computing it."""
  return shapes_of(jax.eval_shape(optimizer.init, params))


def check_opt_state(opt_state: Any, layout: Any) -> None:
  """``ValueError`` unless ``opt_state`` has the :func:`opt_state_layout` ``layout``."""
  if shapes_of(opt_state) != layout:
    raise ValueError("opt_state does not fit params: its tree or shapes differ from "
                     "optimizer.init(params)'s (another optimizer or another model?)")


def make_train_step(optimizer: optax.GradientTransformation, *, model: ModelSpec = ModelSpec(),
                    loss: LossSpec = LossSpec(), compute: ComputeSpec = ComputeSpec(),
                    donate: bool = True, mesh: Any = "auto") -> Step:
  """A jit-compiled step ``(params, opt_state, batch, key=None) -> (params, opt_state, metrics)``.

  ``metrics``: the ``"loss"`` and the gradient's ``"grad_norm"`` before the
  update, and ``"param_max"``, the largest ``|p|`` after it (NaN or inf
  exactly when the update made one). A ``key`` (fresh per step) applies dropout.

  Args:
    optimizer: any ``optax.GradientTransformation``.
    model, loss, compute: the static specs (see :func:`jaxrnn.sequence_loss`).
    donate: update ``params`` and ``opt_state`` in place: the arrays passed in
      are deleted by the call (use those it returns). ``False`` keeps them, at
      the cost of a copy (tied weights need it).
    mesh: a ``jax.sharding.Mesh`` / device count to split the batch over
      (:func:`jaxrnn.parallel.split`; ``B`` divisible by it); ``"auto"`` (default):
      every local device where there are several and they divide ``B``, else one;
      ``None``: one device.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> batch = jaxrnn.Batch(jax.random.normal(jax.random.key(1), (6, 4, 3)),  # xs [T, B, I]
    ...                      jnp.ones((6, 4), int))                         # targets [T, B]
    >>> optimizer = jaxrnn.make_optimizer("adam", 1e-2, clip_norm=1.0)
    >>> step = jaxrnn.make_train_step(optimizer)
    >>> params, opt_state, metrics = step(params, optimizer.init(params), batch)
    >>> sorted(metrics)
    ['grad_norm', 'loss', 'param_max']
  """
  check_specs(None, model, loss, compute)
  check_optimizer(optimizer)
  if not isinstance(donate, bool):
    raise TypeError(f"donate must be a bool, got {donate!r}")
  body = parallel.split(functools.partial(value_and_grad, model=model, loss=loss,
                                          compute=compute), mesh)

  def train_step(params, opt_state, batch, key=None):
    problem = prepare(params, batch, None, key, model, loss, compute)
    (value, grads), _ = body(params, batch, problem)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    param_max = jnp.max(jnp.stack([jnp.max(jnp.abs(p)) for p in jax.tree.leaves(params)]))
    return params, opt_state, {"loss": value, "grad_norm": optax.tree.norm(grads),
                               "param_max": param_max}

  compiled = jax.jit(train_step, donate_argnums=(0, 1) if donate else ())
  expected: dict[Any, Any] = {}

  def checked_step(params, opt_state, batch, key=None):
    leaves = jax.tree.leaves((params, opt_state))
    if any(checks.is_deleted(leaf) for leaf in leaves):
      raise ValueError("params or opt_state were donated to an earlier step and deleted: pass "
                       "the ones that step returned, or build that step with donate=False")
    if donate and len({id(leaf) for leaf in leaves}) < len(leaves):
      raise ValueError("params or opt_state hold one array twice (tied weights?): a donating "
                       "step cannot update it in place; build the step with donate=False")
    layout = shapes_of(params)
    if layout not in expected:
      checks.check_params(params)
      expected[layout] = opt_state_layout(optimizer, params)
    check_opt_state(opt_state, expected[layout])
    if (split_over := parallel.resolve(mesh, parallel.batch_size(batch))) is not None:
      place = parallel.place_step_arguments(parallel.as_mesh(split_over))
      params, opt_state, batch, key = place(params, opt_state, batch, key)
    return compiled(params, opt_state, batch, key)

  return checked_step


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def evaluation_sums(params: RNNParams, batch: Batch, problem: Problem, model: ModelSpec,
                    loss: LossSpec, compute: ComputeSpec) -> tuple[Metrics, jax.Array]:
  """``({"loss": L, "live": live steps, "score": hits or squared errors over them}, final)``:
  what :func:`evaluate` adds up (over shards too). A class outside ``[0, O)`` makes it NaN."""
  z, final = logits(params, batch, problem, model, compute)              # [T, B, O]
  value = weighted_sum(problem.weights, step_losses(z, batch.targets, model, loss))
  live = problem.weights != 0                                            # [T, B]
  if loss.loss == "cross_entropy":
    valid = (batch.targets >= 0) & (batch.targets < z.shape[-1])
    hits = (jnp.argmax(z, axis=-1) == batch.targets).astype(z.dtype)
    score = jnp.where(valid, hits, jnp.nan)
  else:
    y = output_activation(model, z)
    score = jnp.mean((y - batch.targets) ** 2, axis=-1)
  score = jnp.where(live, score + 0 * problem.weights, 0)                # NaN for a bad weight
  return {"loss": value, "live": live.sum(), "score": jnp.sum(score)}, final


def evaluate(params: RNNParams, batch: Batch, *, model: ModelSpec = ModelSpec(),
             loss: LossSpec = LossSpec(), compute: ComputeSpec = ComputeSpec(),
             mesh: Any = "auto") -> Metrics:
  """Loss and a task metric on ``batch``, over the steps that have a target (no dropout).

  Returns ``{"loss": L}`` and ``"accuracy"`` (cross-entropy: the fraction of
  live steps whose arg-max is the target) or ``"mse"`` (squared error: the mean
  of ``(y_t - target_t)^2`` over live steps and outputs). The arguments are
  :func:`jaxrnn.sequence_loss`'s; ``mesh`` splits the batch, as :func:`make_train_step`'s.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> batch = jaxrnn.Batch(jax.random.normal(jax.random.key(1), (6, 4, 3)),  # xs [T, B, I]
    ...                      jnp.ones((6, 4), int))                         # targets [T, B]
    >>> sorted(jaxrnn.evaluate(params, batch))
    ['accuracy', 'loss']
  """
  problem = prepare(params, batch, None, None, model, loss, compute)
  body = functools.partial(evaluation_sums, model=model, loss=loss, compute=compute)
  sums, _ = parallel.split(body, mesh)(params, batch, problem)
  name = "accuracy" if loss.loss == "cross_entropy" else "mse"
  return {"loss": sums["loss"], name: sums["score"] / jnp.maximum(sums["live"], 1)}


def make_eval_step(*, model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec(),
                   compute: ComputeSpec = ComputeSpec(),
                   mesh: Any = "auto") -> Callable[[RNNParams, Batch], Metrics]:
  """``jax.jit`` of :func:`evaluate` for fixed specs and ``mesh`` (as :func:`make_train_step`'s):
  ``(params, batch) -> metrics``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> batch = jaxrnn.Batch(jnp.ones((6, 4, 3)), jnp.ones((6, 4), int),
    ...                      lengths=jnp.array([6, 5, 2, 1]))
    >>> eval_step = jaxrnn.make_eval_step(loss=jaxrnn.LossSpec(reduction="mean"))
    >>> metrics = eval_step(params, batch)                 # compiled on its first call
    >>> sorted(metrics)
    ['accuracy', 'loss']
  """
  check_specs(None, model, loss, compute)
  parallel.resolve(mesh, 0)
  mesh = mesh if mesh is None or isinstance(mesh, str) else parallel.as_mesh(mesh)
  compiled = jax.jit(functools.partial(evaluate, model=model, loss=loss, compute=compute,
                                       mesh=mesh))

  def eval_step(params, batch):
    if (split_over := parallel.resolve(mesh, parallel.batch_size(batch))) is None:
      return compiled(params, batch)
    split_over = parallel.as_mesh(split_over)
    return compiled(parallel.replicate(params, split_over), parallel.shard_batch(batch, split_over))

  return eval_step


class FitResult(NamedTuple):
  """What :func:`fit` returns: final ``params``, ``opt_state`` and per-step metrics."""
  params: RNNParams
  opt_state: Any
  history: dict[str, np.ndarray]


def fit(params: RNNParams, opt_state: Any, train_step: Step,
        batches: Callable[[int], Batch] | Sequence[Batch], steps: int | range, *,
        key: jax.Array | None = None, progress: bool = True,
        callback: Callable[[int, RNNParams, Any, dict[str, float]], None] | None = None
        ) -> FitResult:
  """Runs ``train_step`` over ``steps``, with a progress bar that shows the loss.

  Args:
    params, opt_state: where to start (copied, not modified).
    train_step: from :func:`make_train_step` (it carries optimizer, specs and mesh).
    batches: ``step -> Batch`` (indexed by step, so a run is reproducible and
      resumable from any step), or a sequence of batches.
    steps: a count from step 0, or ``range(start, stop)``.
    key: a ``jax.random`` key for dropout; step ``s`` uses ``fold_in(key, s)``.
    progress: a tqdm bar (its rate leaves out the first step, which compiles).
    callback: ``callback(step, params, opt_state, metrics)`` after every step.

  Returns:
    :class:`FitResult`, ``history`` with the metrics of every step.

  Raises:
    FloatingPointError: a metric became NaN/inf; the message names the step,
      and ``callback`` is not called for it (nothing non-finite is saved).

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> batch = jaxrnn.Batch(jax.random.normal(jax.random.key(1), (6, 4, 3)),  # xs [T, B, I]
    ...                      jnp.ones((6, 4), int))                         # targets [T, B]
    >>> optimizer = jaxrnn.make_optimizer("adam", 1e-2)
    >>> step = jaxrnn.make_train_step(optimizer)
    >>> result = jaxrnn.fit(params, optimizer.init(params), step, [batch] * 3, 3, progress=False)
    >>> result.history["loss"].shape
    (3,)
  """
  if not checks.is_concrete(*jax.tree.leaves((params, opt_state))):
    raise TypeError("fit runs a Python loop of compiled steps and cannot be traced: call it "
                    "outside jax.jit (the train step inside it is compiled already)")
  if isinstance(steps, int) and not isinstance(steps, bool):
    checks.check_int("steps", steps, 0)
    steps = range(steps)
  if not isinstance(steps, range) or steps.step != 1 or steps.start < 0:
    raise ValueError(f"steps must be an int >= 0 or a range(start, stop), got {steps!r}")
  if isinstance(batches, Sequence):
    if len(batches) < steps.stop:
      raise ValueError(f"batches holds {len(batches)} batches, but steps run to {steps.stop}")
    batches = batches.__getitem__
  elif not callable(batches):
    raise TypeError(f"batches must be a function step -> Batch or a sequence of batches, got "
                    f"{type(batches).__name__}")
  if key is not None:
    checks.check_key("key", key)
  params, opt_state = jax.tree.map(jnp.copy, (params, opt_state))
  history: dict[str, list[float]] = {"loss": [], "grad_norm": [], "param_max": []}
  bar = tqdm(total=len(steps), disable=not progress, unit="step")
  for step in steps:
    step_key = None if key is None else jax.random.fold_in(key, step)
    batch = batches(step)
    params, opt_state, metrics = train_step(params, opt_state, batch, step_key)
    values = {k: float(v) for k, v in metrics.items()}
    if not all(np.isfinite(v) for v in values.values()):
      raise FloatingPointError(f"non-finite training metrics at step {step}: {values}")
    for k, v in values.items():
      history[k].append(v)
    postfix = {"loss": f"{values['loss']:.4f}"}
    if step == steps.start:                               # it compiled: counted, not timed
      bar.reset(total=len(steps))
      bar.initial = bar.n = bar.last_print_n = 1
    else:
      bar.update()
      if bar.format_dict["rate"]:
        postfix["seq/s"] = f"{bar.format_dict['rate'] * jnp.shape(batch.xs)[1]:.0f}"
    bar.set_postfix(postfix)
    if callback is not None:
      callback(step, params, opt_state, values)
  bar.close()
  return FitResult(params, opt_state, {k: np.asarray(v) for k, v in history.items()})
