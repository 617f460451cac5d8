"""Batch split over devices: each device (a CPU core, a GPU) runs its own chain on its rows,
and one ``psum`` ends the step. Every ``mesh=`` of the library goes through :func:`split`; the
training functions' default ``mesh="auto"`` splits over every local device where they divide
the batch (:func:`resolve`). A CPU's cores are devices only when asked before JAX starts
(``jax.config.update("jax_num_cpu_devices", 2)`` right after ``import jax``; jaxrnn never sets
it for you): the ``jaxrnn`` command does this."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrnn import checks
from jaxrnn.losses import Problem
from jaxrnn.pytrees import Batch, RNNParams

AXIS = "batch"
ROWS = P(None, AXIS)                # a [T, B, ...] or [L*D, B, H] array, split along B


def batch_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh named ``"batch"`` over the first ``num_devices`` devices (all when ``None``)."""
  return checks.device_mesh("num_devices", num_devices, AXIS)


def as_mesh(mesh: Mesh | int | None) -> Mesh:
  """``mesh`` itself, or a batch mesh over a device count (all devices for ``None``); a bad count
  is named ``mesh``, the argument it came from."""
  return mesh if isinstance(mesh, Mesh) else checks.device_mesh("mesh", mesh, AXIS)


def resolve(mesh: Mesh | int | str | None, batch_size: int) -> Mesh | int | None:
  """``mesh`` with ``"auto"`` (the training functions' default) resolved for a batch of
  ``batch_size``: every device of this process when it has several, they divide ``B`` and it is
  the only process, else ``None`` (one device, no split). Other values are returned as given."""
  if not isinstance(mesh, str):
    return mesh
  if mesh != "auto":
    raise ValueError(f"mesh must be a jax.sharding.Mesh, a device count, 'auto' or None, got "
                     f"{mesh!r}")
  devices = jax.local_device_count()
  if devices < 2 or batch_size % devices or jax.process_count() > 1:
    return None
  return batch_mesh(devices)


def batch_size(batch: Batch) -> int:
  """``B`` of ``batch``, which a step reads before anything else to choose its split;
  ``TypeError``/``ValueError`` naming ``batch`` unless it is a :class:`jaxrnn.Batch` whose
  ``xs`` is ``[T, B, I]``."""
  checks.check_type("batch", batch, Batch)
  checks.check_shape("batch.xs", batch.xs, "[T, B, I]", (None, None, None))
  return jnp.shape(batch.xs)[1]


def check_divisible(batch_size: int, mesh: Mesh) -> None:
  """Raises ``ValueError`` unless ``batch_size`` splits evenly over the devices of ``mesh``."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(f"batch size B={batch_size} must be divisible by the {devices} devices")


def batch_specs(batch: Batch) -> Batch:
  """How each field of ``batch`` is split: along ``B``, axis 1 of ``[T, B, ...]``, axis 0 of ``lengths``."""
  return Batch(ROWS, ROWS, None if batch.lengths is None else P(AXIS),
               None if batch.target_mask is None else ROWS)


def in_host_memory(x: Any) -> bool:
  """Whether ``x`` is a computed jax array on one CPU device (not a PRNG key): host memory that
  NumPy views without a copy (batches only: a donated array placed from it would live on)."""
  return (isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
          and [device.platform for device in x.sharding.device_set] == ["cpu"]
          and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))


def put(x: Any, sharding: NamedSharding) -> Any:
  """The array ``x`` placed as ``sharding`` says (a no-op where it already is); from host memory
  (NumPy, or any array of a multi-process job) each device gets its piece as a contiguous copy."""
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.sharding == sharding:
    return x                                     # already there: skips device_put's cost
  if isinstance(x, jax.core.Tracer) or not (isinstance(x, np.ndarray) or jax.process_count() > 1):
    return jax.device_put(x, sharding)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  value = np.asarray(x)
  return jax.make_array_from_callback(value.shape, sharding,
                                      lambda index: np.array(value[index], order="C"))


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
  """``batch`` placed on ``mesh``: each device holds its ``B / n`` sequences."""
  check_divisible(jnp.shape(batch.xs)[1], mesh)
  return jax.tree.map(lambda x, s: put(np.asarray(x) if in_host_memory(x) else x,
                                       NamedSharding(mesh, s)), batch, batch_specs(batch))


def placed_batches(batches: Callable[[int], Batch], mesh: Mesh) -> Callable[[int], Batch]:
  """``step -> batch`` computed straight into its split over ``mesh`` (``batches`` jittable):
  no step builds the whole batch on one device and copies it out."""
  shape = jax.eval_shape(batches, 0)
  check_divisible(shape.xs.shape[1], mesh)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), batch_specs(shape))
  return jax.jit(batches, out_shardings=shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree`` with every array on all devices of ``mesh`` (a no-op for arrays already there)."""
  return jax.tree.map(lambda x: put(x, NamedSharding(mesh, P())), tree)


def local_copy(tree: Any) -> Any:
  """``tree`` with each replicated array of a multi-process job as this process's own copy
  (on one of its devices), for work every process does alone (scoring, saving a plot)."""
  return jax.tree.map(lambda x: x if not isinstance(x, jax.Array) or x.is_fully_addressable
                      else x.addressable_data(0), tree)


def place_step_arguments(mesh: Mesh) -> Callable[..., tuple[Any, ...]]:
  """``(params, opt_state, batch, key) ->`` the same, params/state/key replicated, batch split."""
  return lambda params, opt_state, batch, key: (
      replicate(params, mesh), replicate(opt_state, mesh), shard_batch(batch, mesh),
      None if key is None else replicate(key, mesh))


def problem_specs(problem: Problem) -> Problem:
  """How each array of a :class:`jaxrnn.losses.Problem` is split: along its ``B`` axis; the
  state-dropout masks (``[H]``, shared by the whole batch) are replicated."""
  masks = problem.masks
  if masks is not None:
    masks = masks._replace(
        between=None if masks.between is None else tuple(ROWS for _ in masks.between),
        inputs=None if masks.inputs is None else jax.tree.map(lambda _: P(AXIS), masks.inputs),
        state=None if masks.state is None else jax.tree.map(lambda _: P(), masks.state))
  return Problem(ROWS, None if problem.mask is None else ROWS, ROWS, masks)


Body = Callable[[RNNParams, Batch, Problem], tuple[Any, jax.Array]]


def split(body: Body, mesh: Mesh | int | None) -> Body:
  """``body`` with the batch split over the devices of ``mesh``: the data-parallel transformation.

  ``body(params, batch, problem) -> (sums, rows)`` runs on each device with its
  ``B / n`` rows of ``batch`` and ``problem`` (whose masks, loss weights and
  dropout masks were drawn for the whole batch, so a row gets the same numbers
  wherever it runs); one ``psum`` adds the ``sums`` (a loss and its gradient,
  evaluation counts), equal to the unsplit ones to rounding; ``rows`` (final
  states ``[L*D, B, H]``) stay split. ``mesh=None``: ``body`` itself; ``"auto"``: as
  :func:`resolve` decides for the batch it is called with.

  Raises:
    ValueError: ``B`` not divisible by the number of devices in ``mesh``.
  """
  if isinstance(mesh, str):
    resolve(mesh, 0)                                    # a bad string fails here, not traced
    return lambda params, batch, problem: split(body, resolve(mesh, jnp.shape(batch.xs)[1]))(
        params, batch, problem)
  if mesh is None:
    return body
  mesh = as_mesh(mesh)

  def local(params, batch, problem):
    sums, rows = body(params, batch, problem)
    return jax.lax.psum(sums, AXIS), rows

  def split_body(params, batch, problem):
    check_divisible(jnp.shape(batch.xs)[1], mesh)
    specs = (P(), batch_specs(batch), problem_specs(problem))
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(P(), ROWS),
                         check_vma=False)(params, batch, problem)

  return split_body
