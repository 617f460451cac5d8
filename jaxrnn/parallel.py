"""Batch split over devices: one recurrence chain per device (a CPU core, a GPU), any model.

The per-step cost of ``h_t = act(a_t + W_hh h_{t-1})`` bounds this model, and
splitting each small ``[B, H] x [H, H]`` matmul over two threads costs a sync
per step. Splitting the *batch* instead gives each device its own chain of
``[B/n, H] x [H, H]`` matmuls with no communication until one ``psum`` of the
loss and gradients at the end.

XLA exposes the cores of a CPU as separate devices only when asked, before
``jax`` is imported::

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python train.py

With one device everything still works (and equals the unsplit step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrnn import checks
from jaxrnn.data import Batch
from jaxrnn.losses import check_problem
from jaxrnn.params import RNNParams
from jaxrnn.spec import ComputeSpec, LossSpec, ModelSpec
from jaxrnn.train import Step, compile_step, loss_and_grad

AXIS = "batch"


def batch_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh named ``"batch"`` over the first ``num_devices`` devices (all when ``None``)."""
  if num_devices is not None:
    checks.check_positive_int("num_devices", num_devices)
    if num_devices > jax.device_count():
      raise ValueError(f"num_devices={num_devices} but only {jax.device_count()} devices exist")
  return Mesh(jax.devices()[:num_devices], (AXIS,))


def batch_specs(batch: Batch) -> Batch:
  """How each field of ``batch`` is split: along ``B``, axis 1 of ``[T, B, ...]``, axis 0 of ``lengths``."""
  time_major = P(None, AXIS)
  return Batch(time_major, time_major, None if batch.lengths is None else P(AXIS),
               None if batch.target_mask is None else time_major)


def parallel_loss_and_grad(params: RNNParams, batch: Batch, mesh: Mesh, *,
                           model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec(),
                           compute: ComputeSpec = ComputeSpec(),
                           key: jax.Array | None = None) -> tuple[jax.Array, RNNParams]:
  """:func:`jaxrnn.loss_and_grad` with the batch split over ``mesh``; the same numbers.

  Each device computes ``sum_{t, b in shard} w_t L_t`` and its gradient; one
  ``psum`` adds them. For ``reduction="mean"`` both are then divided by the
  live-step count of the whole batch, so the result is the unsplit one.
  Dropout draws each shard's masks from ``fold_in(key, device index)``.

  Raises:
    ValueError: ``B`` not divisible by the number of devices in ``mesh``.
  """
  batch_size, devices = jnp.shape(batch.xs)[1], mesh.devices.size
  if batch_size % devices:
    raise ValueError(f"batch size B={batch_size} must be divisible by the {devices} devices")
  local_loss = loss._replace(reduction="sum")
  weights = check_problem(params, batch, None, None, model, local_loss, compute).weights  # [T, B]
  scale = jnp.maximum(weights.sum(), 1) if loss.reduction == "mean" else 1

  def local(params, batch, key):
    if key is not None:
      key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
    return jax.lax.psum(loss_and_grad(params, batch, model=model, loss=local_loss,
                                      compute=compute, key=key), AXIS)

  specs = batch_specs(batch)
  batch = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), batch, specs)
  value, grads = jax.shard_map(local, mesh=mesh, in_specs=(P(), specs, P()), out_specs=P(),
                               check_vma=False)(params, batch, key)
  return value / scale, jax.tree.map(lambda g: g / scale, grads)


def make_parallel_train_step(optimizer: optax.GradientTransformation, *,
                             model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec(),
                             compute: ComputeSpec = ComputeSpec(), mesh: Mesh | None = None,
                             donate: bool = True) -> Step:
  """:func:`jaxrnn.make_train_step` with the batch split over ``mesh`` (all devices if ``None``).

  Same signature, metrics and numbers as the unsplit step (up to float
  rounding); ``B`` must be divisible by the number of devices.

  Example (two CPU cores)::

    # XLA_FLAGS=--xla_force_host_platform_device_count=2, set before importing jax
    from jaxrnn.parallel import make_parallel_train_step
    step = make_parallel_train_step(jaxrnn.make_optimizer("adam", 1e-3))
    params, opt_state, metrics = step(params, opt_state, batch)
  """
  checks.check_model(model)
  checks.check_loss_spec(loss, model)
  checks.check_compute(compute)
  mesh = batch_mesh() if mesh is None else mesh
  value_and_grad = lambda params, batch, key: parallel_loss_and_grad(
      params, batch, mesh, model=model, loss=loss, compute=compute, key=key)
  return compile_step(optimizer, value_and_grad, donate)

