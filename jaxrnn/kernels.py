"""Persistent recurrence kernels in Pallas: the whole time loop in one launch.

On a GPU, ``lax.scan`` pays several kernel launches per time step, which
dominate where the per-step work is small (Diamos et al., *Persistent RNNs*,
2016). Each kernel here runs every step inside one ``pallas_call``, exactly
as :func:`jaxrnn.recurrence.scan_hidden` and
:func:`jaxrnn.recurrence.backward_hidden` do: one program per block of
``block_b`` batch rows loads ``W_hh`` once, keeps it on chip and carries its
state through a ``lax.fori_loop`` over ``T``.

The wrappers zero-pad ``H`` to a power of two ``>= 16`` and ``B`` to a
multiple of ``block_b`` (Triton's block and ``dot`` sizes); a padded unit
stays at ``act(0) = 0`` with gradient 0, so padding changes no number. The
in-kernel ``dot`` runs at ``ComputeSpec.precision``; bfloat16 accumulates in
float32. :func:`fits_on_chip` encodes where ``recurrence="auto"`` picks the
kernels (measured on an H100: ``docs/gpu.md``).
"""

import functools

import jax
import jax.numpy as jnp

from jaxrnn.cell import activation_derivative, step
from jaxrnn.spec import ComputeSpec, ModelSpec

SMEM_BUDGET = 128 * 1024            # bytes of padded W_hh that "auto" keeps on chip
IEEE_BUDGET = 64 * 64 * 4           # the same at precision="highest" (IEEE dot, no tensor cores)
KERNEL_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
BLOCK_B = 16                        # batch rows per program: Triton's smallest dot block

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


def _launch(body, name: str, args: list[tuple[str, jax.Array]], outs: list[str], dtype,
            block_b: int, interpret: bool | None) -> list[jax.Array]:
  """Runs ``body`` once per block of ``block_b`` batch rows on zero-padded ``args``, each
  ``(layout, array)`` with layout ``"w"`` (``[H, H]``, whole), ``"seq"`` (``[T, B, H]``),
  ``"row"`` (``[B, H]``) or ``"mask"`` (``[T, B]``); ``outs`` the layouts of the outputs,
  returned unpadded."""
  # imported here, not with jaxrnn: Pallas and Triton's lowering slow down every import
  from jax.experimental import pallas as pl  # pylint: disable=import-outside-toplevel
  from jax.experimental.pallas import triton as pltriton  # pylint: disable=import-outside-toplevel
  if not isinstance(block_b, int) or block_b < 1 or block_b & (block_b - 1):
    raise ValueError(f"block_b must be a power of two, got {block_b!r}")
  num_steps, batch, hidden = next(a.shape for kind, a in args if kind == "seq")
  width, rows = padded_hidden(hidden), -(-batch // block_b) * block_b
  padded = {"w": (width, width), "seq": (num_steps, rows, width), "row": (rows, width),
            "mask": (num_steps, rows)}
  unpadded = {"seq": (num_steps, batch, hidden), "row": (batch, hidden)}
  if num_steps == 0 or batch == 0:
    return [jnp.zeros(unpadded[kind], dtype) for kind in outs]
  blocks = {"w": (width, width), "seq": (num_steps, block_b, width), "row": (block_b, width),
            "mask": (num_steps, block_b)}
  index = {"w": lambda i: (0, 0), "seq": lambda i: (0, i, 0), "row": lambda i: (i, 0),
           "mask": lambda i: (0, i)}
  spec = lambda kind: pl.BlockSpec(blocks[kind], index[kind])
  arrays = [jnp.pad(a.astype(dtype), [(0, n - m) for m, n in zip(a.shape, padded[kind])])
            for kind, a in args]
  call = lambda interpret: pl.pallas_call(
      body, out_shape=[jax.ShapeDtypeStruct(padded[kind], dtype) for kind in outs],
      grid=(rows // block_b,), in_specs=[spec(kind) for kind, _ in args],
      out_specs=[spec(kind) for kind in outs], name=name, interpret=interpret,
      compiler_params=pltriton.CompilerParams())          # Triton, not JAX's Mosaic GPU default
  if interpret is None:                  # decided where it is lowered: a GPU kernel for CUDA
    results = jax.lax.platform_dependent(*arrays, cuda=call(False), default=call(True))
  else:
    results = call(interpret)(*arrays)
  return [r[:batch, :hidden] if kind == "row" else r[:, :batch, :hidden]
          for kind, r in zip(outs, results)]


def _forward_body(model: ModelSpec, precision, masked: bool, *refs) -> None:
  if masked:
    pre_ref, w_ref, h0_ref, m_ref, hs_ref = refs
  else:
    (pre_ref, w_ref, h0_ref, hs_ref), m_ref = refs, None
  w_t = w_ref[...]                                                       # W_hh^T, on chip
  acc = jnp.promote_types(w_t.dtype, jnp.float32)                       # f32, or f64
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
  acc = jnp.promote_types(w.dtype, jnp.float32)
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
  """:func:`jaxrnn.recurrence.scan_hidden` as one persistent Pallas kernel: ``hs [T, B, H]``.

  ``pre = a_t [T, B, H]``, ``W_hh [H, H]``, ``h0 [B, H]``, ``mask [T, B]`` or ``None``;
  ``block_b`` batch rows per program (a power of two, ``>= 16`` on a GPU); ``interpret``:
  Pallas interpret mode (``None``: wherever the call is lowered for another platform than
  CUDA, so ``jax.export(..., platforms=("cuda",))`` on a CPU holds the GPU kernel)."""
  args = [("seq", pre), ("w", W_hh.T), ("row", h0)] + ([] if mask is None else [("mask", mask)])
  body = functools.partial(_forward_body, model, LAX_PRECISION[compute.precision],
                           mask is not None)
  return _launch(body, "jaxrnn_forward", args, ["seq"], pre.dtype, block_b, interpret)[0]


def backward_kernel(W_hh: jax.Array, hs: jax.Array, g: jax.Array, mask: jax.Array | None,
                    model: ModelSpec, compute: ComputeSpec, block_b: int = BLOCK_B,
                    interpret: bool | None = None) -> tuple[jax.Array, jax.Array]:
  """:func:`jaxrnn.recurrence.backward_hidden` as one persistent Pallas kernel:
  ``(delta [T, B, H], dL/dh_0 [B, H])`` from ``hs = h_1..h_T`` and ``g = dL_t/dh_t``
  (``[T, B, H]``); the rest as :func:`forward_kernel`'s."""
  args = [("w", W_hh), ("seq", hs), ("seq", g)] + ([] if mask is None else [("mask", mask)])
  body = functools.partial(_backward_body, model, LAX_PRECISION[compute.precision],
                           mask is not None)
  return tuple(_launch(body, "jaxrnn_backward", args, ["seq", "row"], hs.dtype, block_b,
                       interpret))
