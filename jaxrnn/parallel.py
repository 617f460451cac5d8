"""Batch split over devices: one recurrence chain per device (a CPU core, a GPU), any model.

The per-step cost of ``h_t = act(a_t + W_hh h_{t-1})`` bounds this model, and
splitting each small ``[B, H] x [H, H]`` matmul over two threads costs a sync
per step. Splitting the *batch* instead gives each device its own chain of
``[B/n, H] x [H, H]`` matmuls with no communication until one ``psum`` of the
loss and gradients at the end.

XLA exposes the cores of a CPU as separate devices only when asked, before
JAX's backend starts (right after ``import jax``, before any computation)::

  jax.config.update("jax_num_cpu_devices", os.cpu_count())

(or ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` before ``import
jax``). The library itself never does this; the ``jaxrnn`` command does
(``--devices``). With one device everything still works (and equals the
unsplit step). The train step, :func:`jaxrnn.fit`, evaluation and truncated
BPTT take ``mesh=`` (a mesh or a device count) and route through here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrnn import checks
from jaxrnn.data import Batch
from jaxrnn.losses import check_problem
from jaxrnn.params import RNNParams
from jaxrnn.spec import ComputeSpec, LossSpec, ModelSpec
from jaxrnn.train import Metrics, Step, compile_step, evaluation_sums, loss_and_grad, metrics_of

AXIS = "batch"


def batch_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh named ``"batch"`` over the first ``num_devices`` devices (all when ``None``)."""
  if num_devices is not None:
    checks.check_positive_int("num_devices", num_devices)
    if num_devices > jax.device_count():
      raise ValueError(f"num_devices={num_devices} but only {jax.device_count()} devices exist")
  return Mesh(jax.devices()[:num_devices], (AXIS,))


def as_mesh(mesh: Mesh | int | None) -> Mesh:
  """``mesh`` itself, or :func:`batch_mesh` of a device count (all devices for ``None``)."""
  return mesh if isinstance(mesh, Mesh) else batch_mesh(mesh)


def check_divisible(batch_size: int, mesh: Mesh) -> None:
  """Raises ``ValueError`` unless ``batch_size`` splits evenly over the devices of ``mesh``."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(f"batch size B={batch_size} must be divisible by the {devices} devices")


def batch_specs(batch: Batch) -> Batch:
  """How each field of ``batch`` is split: along ``B``, axis 1 of ``[T, B, ...]``, axis 0 of ``lengths``."""
  time_major = P(None, AXIS)
  return Batch(time_major, time_major, None if batch.lengths is None else P(AXIS),
               None if batch.target_mask is None else time_major)


def put(x: Any, sharding: NamedSharding) -> Any:
  """The array ``x`` placed as ``sharding`` says (a no-op where it already is).

  In a job of several processes (``jax.distributed``) every process holds
  the same value of ``x`` and transfers only the pieces that its own devices
  hold: its rows of a batch, its copy of replicated parameters.
  """
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.sharding == sharding:
    return x                     # already there: skips device_put's ~25 us per array and call
  if jax.process_count() == 1 or isinstance(x, jax.core.Tracer):
    return jax.device_put(x, sharding)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  value = np.asarray(x)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def shard_batch(batch: Batch, mesh: Mesh) -> tuple[Batch, Batch]:
  """``(specs, batch placed on mesh)``: each device holds its ``B / n`` sequences."""
  check_divisible(jnp.shape(batch.xs)[1], mesh)
  specs = batch_specs(batch)
  return specs, jax.tree.map(lambda x, s: put(x, NamedSharding(mesh, s)), batch, specs)


def placed_batches(batches: Callable[[int], Batch], mesh: Mesh) -> Callable[[int], Batch]:
  """``step -> batch`` computed straight into its split over ``mesh``; ``batches`` must be jittable.

  Each device computes only its own sequences, so no step first builds the
  whole batch on one device and then copies it out (that copy took ~1 ms of
  a ~40 ms medium step on 2 cores). JAX's partitionable random numbers make
  the values those of the unsplit call (tested).
  """
  shape = jax.eval_shape(batches, 0)
  check_divisible(shape.xs.shape[1], mesh)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), batch_specs(shape))
  return jax.jit(batches, out_shardings=shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree`` with every array on all devices of ``mesh`` (a no-op for arrays already there).

  Arrays committed to one device (e.g. restored from a checkpoint) must be
  moved before a jitted split step takes them.
  """
  return jax.tree.map(lambda x: put(x, NamedSharding(mesh, P())), tree)


def local_copy(tree: Any) -> Any:
  """``tree`` with each replicated array of a multi-process job as this process's own copy
  (on one of its devices), for work every process does alone (scoring, saving a plot)."""
  return jax.tree.map(lambda x: x if not isinstance(x, jax.Array) or x.is_fully_addressable
                      else x.addressable_data(0), tree)


def place_step_arguments(mesh: Mesh) -> Callable[..., tuple[Any, ...]]:
  """``(params, opt_state, batch, key) ->`` the same, params/state/key replicated, batch split."""
  return lambda params, opt_state, batch, key: (
      replicate(params, mesh), replicate(opt_state, mesh), shard_batch(batch, mesh)[1],
      None if key is None else replicate(key, mesh))


STATE = P(None, AXIS)
"""How a carried state ``[L, B, H]`` is split: along ``B``."""

LocalGrad = Callable[[RNNParams, Batch, Any, LossSpec, Any], tuple[jax.Array, RNNParams, Any]]


def split_value_and_grad(local_grad: LocalGrad, params: RNNParams, batch: Batch,
                         mesh: Mesh | int | None, h: jax.Array | None = None, *,
                         model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec(),
                         compute: ComputeSpec = ComputeSpec(),
                         key: jax.Array | None = None) -> tuple[jax.Array, RNNParams, Any]:
  """Runs ``local_grad(params, shard, h_shard, loss_sum, key) -> (value, grads, h_out)`` per device.

  The one implementation of the batch split: every device gets ``B / n``
  sequences (and its ``[L, B / n, H]`` slice of ``h``), computes the *summed*
  loss ``sum_{t, b in shard} w_t L_t`` and its gradient, and one ``psum``
  adds them; for ``reduction="mean"`` both are then divided by the live-step
  count of the whole batch, so the result is the unsplit one. ``h_out``
  stays split along ``B``. Dropout draws each shard's masks from
  ``fold_in(key, device index)``.

  Raises:
    ValueError: ``B`` not divisible by the number of devices in ``mesh``.
  """
  mesh = as_mesh(mesh)
  local_loss = loss._replace(reduction="sum")
  weights = check_problem(params, batch, h, None, model, local_loss, compute).weights  # [T, B]
  scale = jnp.maximum(weights.sum(), 1) if loss.reduction == "mean" else 1
  specs, batch = shard_batch(batch, mesh)

  def local(params, batch, h, key):
    if key is not None:
      key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
    value, grads, h_out = local_grad(params, batch, h, local_loss, key)
    return jax.lax.psum((value, grads), AXIS), h_out

  (value, grads), h_out = jax.shard_map(
      local, mesh=mesh, in_specs=(P(), specs, STATE, P()), out_specs=((P(), P()), STATE),
      check_vma=False)(params, batch, h, key)
  return value / scale, jax.tree.map(lambda g: g / scale, grads), h_out


def parallel_loss_and_grad(params: RNNParams, batch: Batch, mesh: Mesh | int | None, *,
                           model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec(),
                           compute: ComputeSpec = ComputeSpec(),
                           key: jax.Array | None = None) -> tuple[jax.Array, RNNParams]:
  """:func:`jaxrnn.loss_and_grad` with the batch split over ``mesh``; the same numbers.

  ``mesh``: a :class:`jax.sharding.Mesh` with axis ``"batch"``, a device
  count, or ``None`` for all devices. See :func:`split_value_and_grad`.

  Raises:
    ValueError: ``B`` not divisible by the number of devices in ``mesh``.
  """
  def local(params, batch, _, loss, key):
    return (*loss_and_grad(params, batch, model=model, loss=loss, compute=compute, key=key), None)

  value, grads, _ = split_value_and_grad(local, params, batch, mesh, model=model, loss=loss,
                                         compute=compute, key=key)
  return value, grads


def make_parallel_train_step(optimizer: optax.GradientTransformation, *,
                             model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec(),
                             compute: ComputeSpec = ComputeSpec(),
                             mesh: Mesh | int | None = None, donate: bool = True) -> Step:
  """:func:`jaxrnn.make_train_step` with the batch split over ``mesh`` (all devices if ``None``).

  Same signature, metrics and numbers as the unsplit step (up to float
  rounding); ``B`` must be divisible by the number of devices. ``mesh`` may
  also be a device count.

  Example (two CPU cores)::

    jax.config.update("jax_num_cpu_devices", 2)    # right after import jax
    step = jaxrnn.make_train_step(jaxrnn.make_optimizer("adam", 1e-3), mesh=2)
    params, opt_state, metrics = step(params, opt_state, batch)
  """
  checks.check_model(model)
  checks.check_loss_spec(loss, model)
  checks.check_compute(compute)
  mesh = as_mesh(mesh)
  value_and_grad = lambda params, batch, key: parallel_loss_and_grad(
      params, batch, mesh, model=model, loss=loss, compute=compute, key=key)
  return compile_step(optimizer, value_and_grad, donate, place_step_arguments(mesh))


def parallel_evaluate(params: RNNParams, batch: Batch, mesh: Mesh | int | None, *,
                      model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec()) -> Metrics:
  """:func:`jaxrnn.evaluate` with the batch split over ``mesh``; the same numbers.

  Each device sums its loss, live-step count and hits (or squared errors);
  one ``psum`` adds them and :func:`jaxrnn.train.metrics_of` divides, so
  ``accuracy``/``mse`` and a ``"mean"`` loss are the whole batch's.

  Raises:
    ValueError: ``B`` not divisible by the number of devices in ``mesh``.
  """
  mesh = as_mesh(mesh)
  specs, batch = shard_batch(batch, mesh)
  local = lambda params, batch: jax.lax.psum(
      evaluation_sums(params, batch, model=model, loss=loss), AXIS)
  sums = jax.shard_map(local, mesh=mesh, in_specs=(P(), specs), out_specs=P(),
                       check_vma=False)(params, batch)
  return metrics_of(sums, loss)


def make_parallel_eval_step(*, model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec(),
                            mesh: Mesh | int | None = None
                            ) -> Callable[[RNNParams, Batch], Metrics]:
  """``jax.jit`` of :func:`parallel_evaluate` for fixed specs and mesh: ``(params, batch) -> metrics``."""
  checks.check_model(model)
  checks.check_loss_spec(loss, model)
  mesh = as_mesh(mesh)
  compiled = jax.jit(functools.partial(parallel_evaluate, mesh=mesh, model=model, loss=loss))
  return lambda params, batch: compiled(replicate(params, mesh), shard_batch(batch, mesh)[1])
