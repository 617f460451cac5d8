"""Time split over devices: one long stream (``B`` smaller than the device count) run by every
device at once, each on its own segment of time, by multiple shooting with boundary correction.

The chain ``h_t = act(a_t + W_hh h_{t-1})`` of a layer is cut into ``P`` segments of ``n``
steps, one per device of a 1-D mesh. Each device projects its inputs (one GEMM) and runs its
segment by ``lax.scan`` from a guess: device 0 from the true ``h0``, the others from zeros.
Then, until no segment's start changes (at most ``P - 1`` rounds, each one ``ppermute``),
each device receives the previous segment's last state and, if it differs from the start it
used, re-runs its segment from it in chunks of ``K`` steps until a whole chunk of the new
trajectory lies within the tolerance of the stored one, and keeps the stored rest.

**Why the result is the sequential one.** Segment 0 starts exactly. If segment ``j``'s start
is exact, its re-run is the sequential chain itself; where it meets the stored trajectory
(``|h_new - h_old| <= tol max(1, |h_old|)`` at every step of a chunk of ``K``) the stored
rest is the chain from a state within ``tol`` of the sequential one, i.e. the sequential
chain with one more perturbation of the size of a rounding error (``tol`` is ``16 eps`` by
default), carried on by the same step Jacobians that carry the sequential chain's own
rounding errors: where they contract (``lambda_1 < 0``) it dies out, where they do not the
trajectories never meet. So segment ``j + 1`` then receives an exact start, and after at most
``P - 1`` rounds every segment is exact. Two float trajectories of a contractive chain meet
to a few ulps but rarely bitwise (``H = 64``: 1-2 ulps apart for ever), so ``tol = 0``
(bitwise) is accepted but always ends in the fallback.

**Fallback.** A re-run that never meets the stored trajectory (a chaotic or exploding model,
``lambda_1 >= 0``) runs to its segment's end: that segment is then the sequential chain from
an exact start, and :class:`SplitStats` says ``fell_back``. The work is bounded: ``P - 1``
rounds of at most ``n`` steps each after the first pass, about the sequential chain's time
in the worst case, and never a half-corrected trajectory. For a contractive model a re-run
takes about ``log(tol) / lambda_1`` steps plus a chunk, so the split takes about ``T / P``.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from jaxrnn import checks
from jaxrnn.cell import readout, time_order
from jaxrnn.pytrees import CellParams, RNNParams
from jaxrnn.recurrence import _fused_bwd, scan_hidden
from jaxrnn.spec import ComputeSpec, ModelSpec, check_specs, precision_scope

AXIS = "time"
ULPS = 16
"""The default tolerance, in units of the working dtype's ``eps``."""


class SplitStats(NamedTuple):
  """How the time split went, one entry per cell (row ``l*D + d``, as ``final``'s), ``[L*D]``:
  ``iterations`` (rounds of boundary correction, ``<= P - 1``), ``rerun_steps`` (steps re-run
  over all devices and rounds; ``0`` when nothing needed it) and ``fell_back`` (a segment's
  re-run never met its stored trajectory, so it ran to its end: the sequential chain)."""
  iterations: jax.Array
  rerun_steps: jax.Array
  fell_back: jax.Array


class TimeSplit(NamedTuple):
  """What :func:`split_time` returns: :class:`jaxrnn.Outputs`'s ``hs [T, B, D*H]``,
  ``ys [T, B, O]`` and ``final [L*D, B, H]``, and the :class:`SplitStats`."""
  hs: jax.Array
  ys: jax.Array
  final: jax.Array
  stats: SplitStats


def time_mesh(mesh: Mesh | int | None) -> Mesh:
  """``mesh`` (a 1-D ``Mesh``, or a device count: a mesh named ``"time"`` over the first
  ``mesh`` devices; ``None``: all of them), checked."""
  if not isinstance(mesh, Mesh):
    return checks.device_mesh("mesh", mesh, AXIS)
  if len(mesh.axis_names) != 1:
    raise ValueError(f"mesh must have one axis to split over, got axes {mesh.axis_names}")
  return mesh


def check_tolerance(tol: float | None, dtype: Any) -> float:
  """``tol`` (``None``: ``16 eps`` of ``dtype``), checked to be a finite number in ``[0, 1)``."""
  if tol is None:
    return ULPS * float(jnp.finfo(dtype).eps)
  checks.check_real("tol", tol, 0, 1)
  return float(tol)


def segment_layout(num_steps: int, num_devices: int, chunk: int) -> tuple[int, int]:
  """``(K, n)``: the chunk and the segment length, a multiple of it, with ``P n >= T`` and at
  most ``P K - 1`` steps of padding at the end."""
  chunk = min(chunk, -(-num_steps // num_devices))
  return chunk, chunk * -(-num_steps // (num_devices * chunk))


def correct_segments(pre: jax.Array, cell: CellParams, h0: jax.Array, model: ModelSpec,
                     compute: ComputeSpec, axis: str, chunk: int,
                     tol: float) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """One device's part of the split (inside ``shard_map``): ``pre [n, B, H]`` is its segment of
  ``a_t = W_xh x_t`` (without ``b_h``), ``h0 [B, H]`` the chain's start. Returns its states
  ``[n, B, H]`` and the stats ``(iterations, rerun_steps, fell_back)``, the same on every device."""
  num_devices = jax.lax.axis_size(axis)
  run = lambda a, h: scan_hidden(a, cell.W_hh, h, None, model, compute, cell.b_h)   # [K, B, H]
  first = jax.lax.axis_index(axis) == 0
  start = jnp.where(first, h0, jnp.zeros_like(h0))                                # [B, H]
  hs = run(pre, start)                                                            # [n, B, H]
  num_chunks = len(pre) // chunk

  def rerun(start, hs, met):
    def unmet(carry):
      i, _, met, _ = carry
      return ~met & (i < num_chunks)

    def one_chunk(carry):                    # writes only `fresh`: its update stays in place
      i, h, _, fresh = carry
      new = run(jax.lax.dynamic_slice_in_dim(pre, i * chunk, chunk), h)
      old = jax.lax.dynamic_slice_in_dim(hs, i * chunk, chunk)
      met = jnp.all(jnp.abs(new - old) <= tol * jnp.maximum(1, jnp.abs(old)))
      return i + 1, new[-1], met, jax.lax.dynamic_update_slice_in_dim(fresh, new, i * chunk, 0)

    i, _, met, fresh = jax.lax.while_loop(unmet, one_chunk,
                                          (jnp.int32(0), start, met, jnp.zeros_like(hs)))
    rerun_steps = i * chunk
    hs = jnp.where(jnp.arange(len(hs))[:, None, None] < rerun_steps, fresh, hs)
    return hs, rerun_steps, ~met

  def rounds_left(carry):
    iterations, changed = carry[:2]
    return changed & (iterations < num_devices - 1)

  def one_round(carry):
    iterations, _, used, hs, steps, fell_back = carry
    received = jax.lax.ppermute(hs[-1], axis, [(j, j + 1) for j in range(num_devices - 1)])
    received = jnp.where(first, h0, received)                                     # [B, H]
    same = jnp.all(received == used)
    hs, rerun_steps, missed = rerun(received, hs, same)
    changed = jax.lax.psum((~same).astype(jnp.int32), axis) > 0
    return (iterations + changed.astype(jnp.int32), changed, received, hs, steps + rerun_steps,
            fell_back | missed)

  zero = jnp.int32(0)
  carry = (zero, jnp.bool_(num_devices > 1), start, hs, zero, jnp.bool_(False))
  iterations, _, _, hs, steps, fell_back = jax.lax.while_loop(rounds_left, one_round, carry)
  return (hs, iterations, jax.lax.psum(steps, axis),
          jax.lax.psum(fell_back.astype(jnp.int32), axis) > 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def split_layer(xs: jax.Array, cell: CellParams, h0: jax.Array, model: ModelSpec,
                compute: ComputeSpec, mesh: Mesh, chunk: int,
                tol: float) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
  """One cell's ``h_t = act(W_xh x_t + b_h + W_hh h_{t-1})`` over ``xs [T, B, I]`` from
  ``h0 [B, H]``, time split over the devices of ``mesh``: ``(hs [T, B, H], stats)``. Its
  gradient is :func:`jaxrnn.recurrence.fused_layer`'s hand-derived BPTT, which needs only
  ``hs`` (a sequential reverse scan, not split)."""
  return _split_fwd(xs, cell, h0, model, compute, mesh, chunk, tol)[0]


def _split_fwd(xs, cell, h0, model, compute, mesh, chunk, tol):
  num_steps, num_devices = len(xs), mesh.devices.size
  chunk, length = segment_layout(num_steps, num_devices, chunk)
  axis = mesh.axis_names[0]
  padded = jnp.pad(xs, [(0, num_devices * length - num_steps), (0, 0), (0, 0)])

  def local(x, cell, h0):
    with precision_scope(compute):
      pre = x @ cell.W_xh.T                                                       # [n, B, H]
    return correct_segments(pre, cell, h0, model, compute, axis, chunk, tol)

  hs, *stats = jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(), P()),
                             out_specs=(P(axis), P(), P(), P()), check_vma=False)(padded, cell, h0)
  hs = hs[:num_steps]
  return (hs, tuple(stats)), (xs, cell, hs, h0, None)


def _split_bwd(model, compute, mesh, chunk, tol, residuals, g):
  return _fused_bwd(model, compute, residuals, g[0])[:3]


split_layer.defvjp(_split_fwd, _split_bwd)


def split_time(params: RNNParams, xs: jax.Array, h0: jax.Array | None = None, *,
               mesh: Mesh | int | None = None, tol: float | None = None, chunk: int = 128,
               model: ModelSpec = ModelSpec(), compute: ComputeSpec = ComputeSpec()) -> TimeSplit:
  """:func:`jaxrnn.unroll` with time split over the devices of ``mesh``, and how the split went.

  Each cell's chain is cut into one segment per device, run on all devices at
  once and made consistent by boundary correction (this module's docstring):
  the result is the sequential chain's to ``tol`` (float32: ``1e-5``
  relative, float64: ``1e-12``), or, where the correction never meets
  (``lambda_1 >= 0``), the sequential chain, with ``stats.fell_back``. Layer
  ``l + 1`` reads layer ``l``'s split states; a bidirectional model's reverse
  cells split reversed time. Differentiable: the gradient is the hand-derived
  BPTT, sequential. No ``lengths`` (one stream: slice ``xs``), no dropout; the
  chain runs in ``lax.scan`` (never the Pallas kernels).

  Args:
    params, xs, h0, model, compute: :func:`jaxrnn.unroll`'s; ``compute.dtype``
      and ``compute.precision`` apply.
    mesh: a 1-D ``jax.sharding.Mesh`` or a device count (``None``: all devices).
    tol: the acceptance tolerance, relative to ``max(1, |h|)``, in ``[0, 1)``;
      ``None``: ``16 eps`` of the working dtype.
    chunk: ``K``, steps per re-run chunk and the window that must agree.

  Returns:
    :class:`TimeSplit` ``(hs [T, B, D*H], ys [T, B, O], final [L*D, B, H], stats)``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> hs, ys, final, stats = jaxrnn.split_time(params, jnp.ones((50, 1, 3)), mesh=1)
    >>> ys.shape, int(stats.iterations[0]), bool(stats.fell_back[0])
    ((50, 1, 2), 0, False)
  """
  shape, h0, _ = checks.check_inputs(params, xs, h0, None)
  check_specs(shape, model, None, compute)
  mesh = time_mesh(mesh)
  checks.check_int("chunk", chunk)
  if jnp.shape(xs)[0] < 1:
    raise ValueError("xs must hold at least one step (T >= 1) to split time")
  work = params.W_hy.dtype if compute.dtype is None else jnp.dtype(compute.dtype)
  return split_layers(params, xs.astype(work), h0.astype(work), mesh, chunk,
                      check_tolerance(tol, work), model, compute)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def split_layers(params: RNNParams, xs: jax.Array, h0: jax.Array, mesh: Mesh, chunk: int,
                 tol: float, model: ModelSpec, compute: ComputeSpec) -> TimeSplit:
  """:func:`split_time` on checked arguments (``xs`` and ``h0`` in the working dtype), one
  program per shape, options and specs."""
  dtype, work, x = params.W_hy.dtype, xs.dtype, xs
  finals, stats = [], []
  for l, layer in enumerate(params.layers):
    cells = []
    for d, cell in enumerate(layer):
      cell = jax.tree.map(lambda a: a.astype(work), cell)
      hs, cell_stats = split_layer(time_order(x, d == 1), cell, h0[l * len(layer) + d], model,
                                   compute, mesh, chunk, tol)
      cells.append(time_order(hs, d == 1))
      finals.append(hs[-1])
      stats.append(cell_stats)
    x = jnp.concatenate(cells, axis=-1)                                           # [T, B, D*H]
  with precision_scope(compute):
    top = x.astype(dtype)
    ys = readout(params, top, model)                                              # [T, B, O]
  return TimeSplit(top, ys, jnp.stack(finals).astype(dtype),
                   SplitStats(*(jnp.stack(s) for s in zip(*stats))))


def on_mesh(run: Callable[..., Any], pick: Callable[[TimeSplit], Any], params: RNNParams,
            xs: jax.Array, h0: jax.Array, lengths: jax.Array | None, mesh: Mesh | int | None,
            **options) -> Any:
  """What ``mesh=`` does in :func:`jaxrnn.unroll` and :func:`jaxrnn.infer`, whose unsplit
  body is ``run(params, xs, h0, lengths, **options) -> arrays with B on axis 1``.

  Fewer sequences than devices: ``pick`` of :func:`split_time` with the keyword
  arguments ``options``; no ``lengths`` (a stream has one length: slice ``xs``).
  Otherwise the batch split: each device runs ``run`` on its ``B / P``
  sequences (``B`` must be divisible by ``P``).
  """
  mesh = time_mesh(mesh)
  batch, devices = jnp.shape(xs)[1], mesh.devices.size
  if batch < devices:
    if lengths is not None:
      raise ValueError("lengths must be None when mesh= splits time (fewer sequences than "
                       "devices): a single stream has one length, slice xs to it")
    return pick(split_time(params, xs, h0, mesh=mesh, **options))
  if batch % devices:
    raise ValueError(f"batch size B={batch} must be divisible by the {devices} devices of mesh "
                     f"(or smaller than their number, to split time)")
  return split_batch(run, mesh, tuple(options.items()), params, xs, h0, lengths)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def split_batch(run: Callable[..., Any], mesh: Mesh, options: tuple[tuple[str, Any], ...],
                params: RNNParams, xs: jax.Array, h0: jax.Array, lengths: jax.Array | None) -> Any:
  """The batch split of :func:`on_mesh`, one program per ``run``, mesh, options and shapes."""
  rows = P(None, mesh.axis_names[0])
  args, specs = (params, xs, h0), (P(), rows, rows)
  if lengths is not None:
    args, specs = args + (lengths,), specs + (P(mesh.axis_names[0]),)
  body = lambda *args: run(*args, **dict(options))
  return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=rows, check_vma=False)(*args)
