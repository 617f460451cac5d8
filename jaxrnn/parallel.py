"""Opt-in batch split over host devices: one recurrence chain per CPU core.

The per-step cost of ``h_t = act(a_t + W_hh h_{t-1})`` bounds this model, and
splitting each small ``[B, H] x [H, H]`` matmul over two threads costs a sync
per step. Splitting the *batch* instead gives each core its own chain of
``[B/n, H] x [H, H]`` matmuls with no communication until one ``psum`` of the
loss and gradients at the end.

XLA exposes the cores of a CPU as separate devices only when asked, before
``jax`` is imported::

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python train.py

With one device everything still works (and equals the unsplit step).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrnn import _checks
from jaxrnn.init import RNNParams
from jaxrnn.losses import check_loss_inputs
from jaxrnn.train import GRADIENTS, Batch, LossSpec, Metrics, compile_step, loss_and_grad

AXIS = "batch"


def batch_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh named ``"batch"`` over the first ``num_devices`` devices (all when ``None``)."""
  devices = jax.devices()[:num_devices]
  return Mesh(devices, (AXIS,))


def batch_specs(batch: Batch) -> Batch:
  """How each field of ``batch`` is split: along ``B``, axis 1 of ``[T, B, ...]``, axis 0 of ``lengths``."""
  time_major = P(None, AXIS)
  return Batch(time_major, time_major, None if batch.lengths is None else P(AXIS),
               None if batch.target_mask is None else time_major)


def parallel_loss_and_grad(params: RNNParams, batch: Batch, spec: LossSpec, mesh: Mesh,
                           gradient: str = "fused") -> tuple[jax.Array, RNNParams]:
  """:func:`jaxrnn.loss_and_grad` with the batch split over ``mesh``; the same numbers.

  Each device computes ``sum_{t, b in shard} w_t L_t`` and its gradient; one
  ``psum`` adds them. For ``reduction="mean"`` both are then divided by the
  live-step count of the whole batch, so the result is the unsplit one.

  Raises:
    ValueError: ``B`` not divisible by the number of devices in ``mesh``.
  """
  _checks.check_choice("gradient", gradient, GRADIENTS)
  batch_size, devices = jnp.shape(batch.xs)[1], mesh.devices.size
  if batch_size % devices:
    raise ValueError(f"batch size B={batch_size} must be divisible by the {devices} devices")
  _, weights = check_loss_inputs(params, batch.xs, batch.targets, spec.loss, batch.lengths, None,
                                 spec.activation, spec.output_activation, "sum",
                                 batch.target_mask)                   # [T, B]
  scale = jnp.maximum(weights.sum(), 1) if spec.reduction == "mean" else 1
  local_spec = spec._replace(reduction="sum")

  def local(params, batch):
    return jax.lax.psum(loss_and_grad(params, batch, local_spec, gradient), AXIS)

  specs = batch_specs(batch)
  batch = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), batch, specs)
  loss, grads = jax.shard_map(local, mesh=mesh, in_specs=(P(), specs), out_specs=P(),
                              check_vma=False)(params, batch)
  return loss / scale, jax.tree.map(lambda g: g / scale, grads)


def make_parallel_train_step(optimizer: optax.GradientTransformation, spec: LossSpec = LossSpec(),
                             gradient: str = "fused", mesh: Mesh | None = None,
                             donate: bool = True,
                             ) -> Callable[[RNNParams, Any, Batch], tuple[RNNParams, Any, Metrics]]:
  """:func:`jaxrnn.make_train_step` with the batch split over ``mesh`` (all devices if ``None``).

  Same signature, metrics and numbers as the unsplit step (up to float
  rounding); ``B`` must be divisible by the number of devices.

  Example (two CPU cores)::

    # XLA_FLAGS=--xla_force_host_platform_device_count=2, set before importing jax
    from jaxrnn.parallel import make_parallel_train_step
    step = make_parallel_train_step(jaxrnn.make_optimizer("adam", 1e-3))
    params, opt_state, metrics = step(params, opt_state, batch)
  """
  _checks.check_choice("gradient", gradient, GRADIENTS)
  mesh = batch_mesh() if mesh is None else mesh
  return compile_step(optimizer, functools.partial(parallel_loss_and_grad, spec=spec, mesh=mesh,
                                                   gradient=gradient), donate)
