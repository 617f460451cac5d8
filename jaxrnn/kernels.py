"""Persistent recurrence kernels in Pallas: the whole time loop in one launch.

On a GPU, ``lax.scan`` pays several kernel launches per time step; where the
sequence is long and the per-step work small that launch cost dominates
(Diamos et al., *Persistent
RNNs*, ICML 2016). The two kernels here run every step inside one
``pallas_call``:

* :func:`forward_kernel`: ``h_t = act(a_t + W_hh h_{t-1})`` (a masked step
  keeps ``h_t = h_{t-1}``), exactly :func:`jaxrnn.recurrence.scan_hidden`;
* :func:`backward_kernel`: ``delta_t = m_t e_t act'(h_t)``,
  ``c_{t-1} = W_hh^T delta_t + (1 - m_t) e_t`` with ``e_t = g_t + c_t``,
  exactly :func:`jaxrnn.recurrence.backward_hidden`.

The grid runs over batch blocks of ``block_b`` rows (one program each); a
program loads ``W_hh`` once and keeps it on chip, carries its ``[block_b, H]``
state in registers through a ``lax.fori_loop`` over ``T`` and reads ``a_t``
(``g_t``, ``h_t``) and writes ``h_t`` (``delta_t``) one step at a time.

Triton's constraints are met by zero padding in the wrappers: ``H`` goes up to
a power of two ``>= 16`` and ``B`` to a multiple of ``block_b`` (a power of
two; ``>= 16`` for a ``dot`` on a GPU). Zero rows and columns of ``W_hh``,
zero ``a_t`` and zero ``h_0`` keep every padded unit at ``act(0) = 0`` and its
gradient at 0, so padding changes no number; the padding is sliced off.

Precision: the in-kernel ``dot`` takes the ``precision`` given (``"highest"``
lowers to Triton's IEEE float32 ``dot``, ``"default"`` to TF32); bfloat16
inputs accumulate in float32 and round the state to bfloat16 each step.

The kernels equal the ``lax.scan`` path (``tests/test_kernels.py`` runs them
in Pallas interpret mode on the CPU; the tests marked ``gpu`` compile them);
:func:`fits_on_chip` encodes where ``recurrence="auto"`` picks them, from the
H100 measurements in ``docs/gpu.md``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxrnn.cell import activation_derivative, step
from jaxrnn.spec import ComputeSpec, ModelSpec

SMEM_BUDGET = 128 * 1024
"""Bytes of ``W_hh`` (padded) that ``recurrence="auto"`` keeps on chip; above it, ``lax.scan``."""

IEEE_BUDGET = 64 * 64 * 4
"""The same for a float32 ``W_hh`` at ``precision="highest"`` (Triton's IEEE ``dot``, no tensor
cores)."""

KERNEL_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
"""The dtypes ``recurrence="auto"`` runs in the kernel on a GPU (float64 stays on ``lax.scan``)."""

BLOCK_B = 16
"""Default batch rows per program: Triton's smallest ``dot`` block."""

LAX_PRECISION = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}


def padded_hidden(hidden: int) -> int:
  """``H`` rounded up to a power of two ``>= 16`` (Triton block and ``dot`` sizes)."""
  return max(16, 1 << max(hidden - 1, 0).bit_length())


def fits_on_chip(dtype, hidden: int, precision: str = "default") -> bool:
  """Whether ``recurrence="auto"`` may use the kernel for this dtype, ``H`` and precision on a
  GPU (:data:`SMEM_BUDGET`, :data:`IEEE_BUDGET`)."""
  dtype = jnp.dtype(dtype)
  ieee = dtype == jnp.float32 and precision == "highest"
  budget = IEEE_BUDGET if ieee else SMEM_BUDGET
  return dtype in KERNEL_DTYPES and padded_hidden(hidden) ** 2 * dtype.itemsize <= budget


def use_kernel(compute: ComputeSpec, dtype, hidden: int) -> bool:
  """``compute.recurrence`` resolved: ``"kernel"`` always, ``"scan"`` never, ``"auto"`` on a
  GPU when :func:`fits_on_chip`."""
  if compute.recurrence == "auto":
    return jax.default_backend() == "gpu" and fits_on_chip(dtype, hidden, compute.precision)
  return compute.recurrence == "kernel"


def _accumulator(dtype) -> jnp.dtype:
  return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def _check_block(block_b: int) -> None:
  if not isinstance(block_b, int) or block_b < 1 or block_b & (block_b - 1):
    raise ValueError(f"block_b must be a power of two, got {block_b!r}")


def _pad(x: jax.Array, sizes: tuple[int, ...]) -> jax.Array:
  widths = [(0, size - n) for n, size in zip(x.shape, sizes)]
  return jnp.pad(x, widths) if any(w for _, w in widths) else x


def _interpret(interpret: bool | None) -> bool:
  return jax.default_backend() != "gpu" if interpret is None else interpret


def _forward_body(model: ModelSpec, precision, masked: bool, *refs) -> None:
  if masked:
    pre_ref, w_ref, h0_ref, m_ref, hs_ref = refs
  else:
    (pre_ref, w_ref, h0_ref, hs_ref), m_ref = refs, None
  w_t = w_ref[...]                                                       # W_hh^T, on chip
  acc = _accumulator(w_t.dtype)
  dot = functools.partial(jnp.dot, precision=precision, preferred_element_type=acc)

  def body(t, h):
    live = None if m_ref is None else m_ref[t][:, None] > 0
    h_new = step(model, pre_ref[t].astype(acc), h, w_t, live, dot).astype(h.dtype)
    hs_ref[t] = h_new
    return h_new

  jax.lax.fori_loop(0, pre_ref.shape[0], body, h0_ref[...])


def _backward_body(model: ModelSpec, precision, masked: bool, *refs) -> None:
  if masked:
    w_ref, hs_ref, g_ref, m_ref, delta_ref, dh0_ref = refs
  else:
    (w_ref, hs_ref, g_ref, delta_ref, dh0_ref), m_ref = refs, None
  w = w_ref[...]                                                         # W_hh, on chip
  acc = _accumulator(w.dtype)
  num_steps = hs_ref.shape[0]

  def body(i, c):
    t = num_steps - 1 - i
    e = g_ref[t] + c                                                     # dL/dh_t
    delta = e * activation_derivative(model, hs_ref[t])
    if m_ref is not None:
      live = m_ref[t][:, None] > 0
      delta = jnp.where(live, delta, 0)
    c = jnp.dot(delta, w, precision=precision, preferred_element_type=acc).astype(c.dtype)
    if m_ref is not None:
      c = c + jnp.where(live, 0, e)
    delta_ref[t] = delta
    return c

  dh0_ref[...] = jax.lax.fori_loop(0, num_steps, body, jnp.zeros(dh0_ref.shape, dh0_ref.dtype))


def forward_kernel(pre: jax.Array, W_hh: jax.Array, h0: jax.Array, mask: jax.Array | None,
                   model: ModelSpec, compute: ComputeSpec, block_b: int = BLOCK_B,
                   interpret: bool | None = None) -> jax.Array:
  """:func:`jaxrnn.recurrence.scan_hidden` as one persistent Pallas kernel.

  Args:
    pre: ``a_t`` for all steps, ``[T, B, H]``.
    W_hh: ``[H, H]``.
    h0: ``[B, H]``.
    mask: ``[T, B]`` of 0/1, or ``None``.
    model: its ``activation``.
    compute: its ``precision`` (of the in-kernel ``dot``).
    block_b: batch rows per program (a power of two; ``>= 16`` on a GPU).
    interpret: Pallas interpret mode; ``None``: on every backend but a GPU.

  Returns:
    ``hs = [h_1, ..., h_T]``, ``[T, B, H]``.
  """
  _check_block(block_b)
  num_steps, batch, hidden = pre.shape
  if num_steps == 0 or batch == 0:
    return jnp.zeros(pre.shape, pre.dtype)
  width, rows = padded_hidden(hidden), -(-batch // block_b) * block_b
  args = [_pad(pre, (num_steps, rows, width)), _pad(W_hh.T, (width, width)),
          _pad(h0, (rows, width))]
  specs = [pl.BlockSpec((num_steps, block_b, width), lambda i: (0, i, 0)),
           pl.BlockSpec((width, width), lambda i: (0, 0)),
           pl.BlockSpec((block_b, width), lambda i: (i, 0))]
  if mask is not None:
    args.append(_pad(mask.astype(pre.dtype), (num_steps, rows)))
    specs.append(pl.BlockSpec((num_steps, block_b), lambda i: (0, i)))
  hs = pl.pallas_call(
      functools.partial(_forward_body, model, LAX_PRECISION[compute.precision], mask is not None),
      out_shape=jax.ShapeDtypeStruct((num_steps, rows, width), pre.dtype),
      grid=(rows // block_b,), in_specs=specs,
      out_specs=pl.BlockSpec((num_steps, block_b, width), lambda i: (0, i, 0)),
      interpret=_interpret(interpret), name="jaxrnn_forward")(*args)
  return hs[:, :batch, :hidden]


def backward_kernel(W_hh: jax.Array, hs: jax.Array, g: jax.Array, mask: jax.Array | None,
                    model: ModelSpec, compute: ComputeSpec, block_b: int = BLOCK_B,
                    interpret: bool | None = None) -> tuple[jax.Array, jax.Array]:
  """:func:`jaxrnn.recurrence.backward_hidden` as one persistent Pallas kernel.

  Args:
    W_hh: ``[H, H]``.
    hs: the forward states ``h_1..h_T``, ``[T, B, H]``.
    g: ``dL_t/dh_t``, ``[T, B, H]``.
    mask, model, compute, block_b, interpret: as :func:`forward_kernel`'s.

  Returns:
    ``(delta [T, B, H], dL/dh_0 [B, H])``.
  """
  _check_block(block_b)
  num_steps, batch, hidden = hs.shape
  if num_steps == 0 or batch == 0:
    return jnp.zeros(hs.shape, hs.dtype), jnp.zeros(hs.shape[1:], hs.dtype)
  width, rows = padded_hidden(hidden), -(-batch // block_b) * block_b
  seq = pl.BlockSpec((num_steps, block_b, width), lambda i: (0, i, 0))
  args = [_pad(W_hh, (width, width)), _pad(hs, (num_steps, rows, width)),
          _pad(g.astype(hs.dtype), (num_steps, rows, width))]
  specs = [pl.BlockSpec((width, width), lambda i: (0, 0)), seq, seq]
  if mask is not None:
    args.append(_pad(mask.astype(hs.dtype), (num_steps, rows)))
    specs.append(pl.BlockSpec((num_steps, block_b), lambda i: (0, i)))
  delta, dh0 = pl.pallas_call(
      functools.partial(_backward_body, model, LAX_PRECISION[compute.precision],
                        mask is not None),
      out_shape=(jax.ShapeDtypeStruct((num_steps, rows, width), hs.dtype),
                 jax.ShapeDtypeStruct((rows, width), hs.dtype)),
      grid=(rows // block_b,), in_specs=specs,
      out_specs=(seq, pl.BlockSpec((block_b, width), lambda i: (i, 0))),
      interpret=_interpret(interpret), name="jaxrnn_backward")(*args)
  return delta[:, :batch, :hidden], dh0[:batch, :hidden]
