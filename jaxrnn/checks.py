"""Argument checks shared by every public entry point: a bad shape, dtype, name or value fails
with a ``ValueError``/``TypeError`` naming the argument, never an XLA error or a silent
broadcast. Value checks (NaN, ranges) look at concrete arrays only, not at tracers.
"""

import math
import os
from collections.abc import Container
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.pytrees import CellParams, RNNParams, Shape, shape_of


def is_concrete(*xs: Any) -> bool:
  """Whether none of ``xs`` is a tracer (so values can be checked)."""
  return not any(isinstance(x, jax.core.Tracer) for x in xs)


def is_deleted(x: Any) -> bool:
  """Whether ``x`` is a concrete jax array whose buffers a donating call deleted (tracers: no)."""
  return isinstance(x, jax.Array) and is_concrete(x) and x.is_deleted()


def check_choice(name: str, value: Any, choices: Container[str]) -> None:
  """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")


def check_type(name: str, value: Any, kind: type) -> None:
  """Raises ``TypeError`` unless ``value`` is a ``kind`` (named ``jaxrnn.<kind>`` in the message)."""
  if not isinstance(value, kind):
    raise TypeError(f"{name} must be a jaxrnn.{kind.__name__}, got {type(value).__name__}")


def check_int(name: str, value: Any, low: int = 1) -> None:
  """Raises ``ValueError`` unless ``value`` is an ``int`` (not a ``bool``) ``>= low``."""
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
    raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def check_real(name: str, value: Any, low: float = 0, high: float = math.inf) -> None:
  """Raises ``ValueError`` unless ``value`` is a finite real with ``low < value < high`` (or
  ``low <= value`` for ``low = 0`` and a bounded ``high``: a rate in ``[0, 1)``)."""
  closed = low == 0 and high < math.inf
  if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
      or not (low <= value if closed else low < value) or not value < high):
    raise ValueError(f"{name} must be a finite number in {'[' if closed else '('}{low:g}, "
                     f"{high:g}), got {value!r}")


def check_shape(name: str, x: Any, layout: str, sizes: tuple[int | None, ...]) -> None:
  """Raises ``TypeError`` unless ``x`` is an array, ``ValueError`` unless its shape is ``sizes``
  (``None``: any size); ``layout`` names the axes, e.g. ``"[T, B, I]"``."""
  if not isinstance(x, (jax.Array, np.ndarray)):
    raise TypeError(f"{name} must be a jax or NumPy array, got {type(x).__name__}")
  if is_deleted(x):
    raise ValueError(f"{name} was deleted (donated to an earlier step?): pass the one it returned")
  shape = jnp.shape(x)
  if len(shape) != len(sizes) or any(s is not None and s != n for s, n in zip(sizes, shape)):
    expected = tuple("*" if s is None else s for s in sizes)
    raise ValueError(f"{name} must have shape {layout} = {expected}, got {shape}".replace("'", ""))


def check_dtype(name: str, x: Any, dtype: Any, what: str) -> None:
  """Raises ``TypeError`` unless ``x`` has the floating dtype ``dtype`` of ``what`` (no silent
  up/down-casting)."""
  got = jnp.result_type(x)
  if not jnp.issubdtype(got, jnp.floating):
    raise TypeError(f"{name} must have a floating-point dtype, got {got}")
  if got != jnp.dtype(dtype):
    raise TypeError(f"{name} has dtype {got} but {what} has dtype {jnp.dtype(dtype)}; "
                    f"cast one of them explicitly")


def check_finite(name: str, x: Any) -> None:
  """Raises ``ValueError`` if a concrete ``x`` holds NaN or inf; a no-op on tracers."""
  if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
    raise ValueError(f"{name} contains NaN or inf")


def check_array(name: str, x: Any, layout: str, sizes: tuple[int | None, ...], dtype: Any,
                what: str = "params") -> None:
  """:func:`check_shape`, :func:`check_dtype` and :func:`check_finite` of one array."""
  check_shape(name, x, layout, sizes)
  check_dtype(name, x, dtype, what)
  check_finite(name, x)


def check_unidirectional(shape: Shape, what: str, why: str) -> None:
  """Raises ``ValueError`` for a bidirectional model: ``what`` needs one direction because ``why``."""
  if shape.num_directions != 1:
    raise ValueError(f"{what} needs a unidirectional model, not a bidirectional one: {why}")


def check_key(name: str, key: Any) -> None:
  """Raises ``TypeError`` unless ``key`` is a ``jax.random`` key (typed, or legacy ``uint32[2]``),
  ``ValueError`` for an array of several typed keys."""
  typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  if typed and key.shape:
    raise ValueError(f"{name} must be one jax.random key, got an array of keys of shape "
                     f"{key.shape}")
  if typed or (isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)):
    return
  raise TypeError(f"{name} must be a jax.random key (e.g. jax.random.key(0)), got "
                  f"{type(key).__name__}")


FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")


def float_dtype(name: str, dtype: Any) -> np.dtype:
  """``dtype`` as a NumPy dtype; ``TypeError`` naming ``name`` unless it is one of
  :data:`FLOAT_DTYPES` (float8 formats are floating too, but nothing here computes in them)."""
  try:
    parsed = jnp.dtype(dtype)
  except TypeError:
    parsed = None
  if parsed is None or parsed.name not in FLOAT_DTYPES:
    raise TypeError(f"{name} must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}")
  return parsed


def check_params(params: Any) -> Shape:
  """Checks that ``params`` is a consistent :class:`RNNParams` (structure, sizes, one floating
  dtype, finite values; messages name the array); returns its :class:`Shape`."""
  check_type("params", params, RNNParams)
  layers = params.layers
  if not isinstance(layers, tuple) or not layers or not all(isinstance(l, tuple) for l in layers):
    raise ValueError("params.layers must be a non-empty tuple (layers) of tuples (directions)")
  num_dirs = len(layers[0])
  if num_dirs not in (1, 2) or any(len(layer) != num_dirs for layer in layers):
    raise ValueError(f"every layer of params.layers must have the same 1 or 2 directions, got "
                     f"{[len(layer) for layer in layers]}")
  if not all(isinstance(cell, CellParams) for layer in layers for cell in layer):
    raise TypeError("params.layers[l][d] must be jaxrnn.CellParams")
  hidden = jnp.shape(layers[0][0].W_hh)[0] if jnp.ndim(layers[0][0].W_hh) == 2 else None
  width = None if hidden is None else num_dirs * hidden
  check_shape("params.W_hy", params.W_hy, "[O, D*H]", (None, None))
  dtype = params.W_hy.dtype
  if jnp.result_type(params.W_hy) != dtype:      # float64 NumPy arrays without jax_enable_x64
    raise TypeError(f"params.W_hy has dtype {dtype}, which JAX computes in "
                    f"{jnp.result_type(params.W_hy)} while jax_enable_x64 is off: turn it on, "
                    f"or cast the params")
  for l, layer in enumerate(layers):
    for d, cell in enumerate(layer):
      name = f"params.layers[{l}][{d}]"
      check_array(f"{name}.W_hh", cell.W_hh, "[H, H]", (hidden, hidden), dtype, "params.W_hy")
      check_array(f"{name}.W_xh", cell.W_xh, "[H, I_l]", (hidden, None if l == 0 else width),
                  dtype, "params.W_hy")
      check_array(f"{name}.b_h", cell.b_h, "[H]", (hidden,), dtype, "params.W_hy")
  check_array("params.W_hy", params.W_hy, "[O, D*H]", (None, width), dtype, "params.W_hy")
  check_array("params.b_y", params.b_y, "[O]", params.W_hy.shape[:1], dtype, "params.W_hy")
  return shape_of(params)


def check_h0(h0: Any, shape: Shape, batch: int, dtype: Any) -> jax.Array:
  """``h0 [L*D, B, H]`` checked (row ``l*D + d`` as torch's), or zeros when ``None``."""
  num_states = shape.num_layers * shape.num_directions
  if h0 is None:
    return jnp.zeros((num_states, batch, shape.hidden_size), dtype)
  check_array("h0", h0, "[L*D, B, H]", (num_states, batch, shape.hidden_size), dtype)
  return jnp.asarray(h0)


def check_mask(name: str, mask: Any, num_steps: int, batch: int) -> None:
  """Checks a 0/1 ``mask [T, B]`` (bool, integer or float holding only 0 and 1)."""
  check_shape(name, mask, "[T, B]", (num_steps, batch))
  if is_concrete(mask) and not np.all(np.isin(np.asarray(mask), (0, 1))):
    raise ValueError(f"{name} must hold only 0 and 1 (or False and True)")


def lengths_mask(lengths: Any, num_steps: int, batch: int, dtype: Any) -> jax.Array | None:
  """Checks ``lengths [B]`` (integers in ``[0, T]``); returns ``m[t, b] = t < lengths[b]``, NaN
  for a length out of range (which only ``jit`` hides from the check)."""
  if lengths is None:
    return None
  check_shape("lengths", lengths, "[B]", (batch,))
  if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
    raise TypeError(f"lengths must have an integer dtype, got {jnp.result_type(lengths)}")
  if is_concrete(lengths) and batch:
    values = np.asarray(lengths)
    if values.min() < 0 or values.max() > num_steps:
      raise ValueError(f"lengths must lie in [0, T={num_steps}], got values in "
                       f"[{values.min()}, {values.max()}]")
  lengths = jnp.asarray(lengths)
  mask = (jnp.arange(num_steps)[:, None] < lengths[None, :]).astype(dtype)      # [T, B]
  valid = (lengths >= 0) & (lengths <= num_steps)                               # [B]
  return jnp.where(valid[None, :], mask, jnp.nan)


def check_inputs(params: Any, xs: Any, h0: Any, lengths: Any,
                 name: str = "xs") -> tuple[Shape, jax.Array, jax.Array | None]:
  """Checks ``params``, ``xs [T, B, I]`` (called ``name``), ``h0`` and ``lengths`` together;
  returns the model's shape, ``h0`` (zeros when ``None``) and the mask (``None`` likewise)."""
  shape = check_params(params)
  dtype = params.W_hy.dtype
  check_array(name, xs, "[T, B, I]", (None, None, shape.input_size), dtype)
  num_steps, batch = jnp.shape(xs)[:2]
  return shape, check_h0(h0, shape, batch, dtype), lengths_mask(lengths, num_steps, batch, dtype)


def device_mesh(name: str, num_devices: int | None, axis: str) -> Any:
  """A 1-D ``jax.sharding.Mesh`` named ``axis`` over the first ``num_devices`` devices (all for
  ``None``); ``ValueError`` naming ``name`` unless it is an int from 1 to the device count."""
  if num_devices is not None:
    check_int(name, num_devices)
    if num_devices > jax.device_count():
      raise ValueError(f"{name}={num_devices} but only {jax.device_count()} devices exist")
  return jax.sharding.Mesh(jax.devices()[:num_devices], (axis,))


def device_memory() -> int:
  """Bytes of memory of JAX's default device: its allocator's limit, or the machine's RAM."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

