"""Initialising an Elman RNN of any depth and direction from a ``jax.random`` key, by one
:class:`jaxrnn.InitSpec` for every cell and the read-out, each array from a key of its own."""

from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn import checks
from jaxrnn.pytrees import CellParams, RNNParams, default_dtype
from jaxrnn.spec import InitSpec

IRNN_STDDEV = 0.001
DEFAULT_SCALE = {"normal": 0.01, "glorot": None, "orthogonal": 1.0, "identity": 1.0}


def init_params(key: jax.Array, input_size: int, hidden_size: int, output_size: int, *,
                num_layers: int = 1, bidirectional: bool = False,
                init: InitSpec | str = InitSpec(), dtype: Any = None) -> RNNParams:
  """Creates the parameters of an Elman RNN; biases are always zero.

  Args:
    key: a ``jax.random`` key; equal keys give equal parameters.
    input_size, hidden_size, output_size: ``I``, ``H`` (every cell's), ``O``.
    num_layers, bidirectional: ``L`` layers of ``D = 2`` directions, or 1.
    init: a :class:`jaxrnn.InitSpec`, or a scheme's name for its defaults.
    dtype: a floating dtype; default float32 (float64 when x64 is enabled).

  Returns:
    :class:`jaxrnn.RNNParams`: ``layers[l][d]`` with ``W_xh [H, I or D*H]``,
    ``W_hh [H, H]``, ``b_h [H]``; ``W_hy [O, D*H]``, ``b_y [O]``.

  Example:
    >>> import jax, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> params.layers[0][0].W_hh.shape, params.W_hy.shape
    ((5, 5), (2, 5))
    >>> deep = jaxrnn.init_params(jax.random.key(0), 3, 5, 2, num_layers=2, bidirectional=True,
    ...                           init=jaxrnn.InitSpec("orthogonal", scale=0.9))
    >>> deep.layers[1][1].W_xh.shape, deep.W_hy.shape
    ((5, 10), (2, 10))
  """
  checks.check_key("key", key)
  for name, size in (("input_size", input_size), ("hidden_size", hidden_size),
                     ("output_size", output_size), ("num_layers", num_layers)):
    checks.check_int(name, size)
  init = InitSpec(init) if isinstance(init, str) else init
  checks.check_type("init", init, InitSpec)
  if not isinstance(bidirectional, bool):
    raise TypeError(f"bidirectional must be a bool, got {bidirectional!r}")
  dtype = default_dtype() if dtype is None else checks.float_dtype("dtype", dtype)
  num_dirs = 2 if bidirectional else 1
  width = num_dirs * hidden_size
  count = num_layers * num_dirs * hidden_size * (hidden_size + width + 1) + output_size * width
  if count * dtype.itemsize > checks.device_memory():
    raise ValueError(f"hidden_size={hidden_size} and num_layers={num_layers} need "
                     f"{count * dtype.itemsize / 2**30:.1f} GiB of parameters: too many")
  scale = DEFAULT_SCALE[init.scheme] if init.scale is None else init.scale
  glorot = jax.nn.initializers.glorot_uniform()

  def dense(k: jax.Array, shape: tuple[int, int]) -> jax.Array:
    if init.scheme == "normal":
      return scale * jax.random.normal(k, shape, dtype)
    if init.scheme == "identity":
      return IRNN_STDDEV * jax.random.normal(k, shape, dtype)
    return glorot(k, shape, dtype)

  def recurrent(k: jax.Array) -> jax.Array:
    shape = (hidden_size, hidden_size)
    if init.scheme == "orthogonal":
      return scale * jax.nn.initializers.orthogonal()(k, shape, dtype)
    if init.scheme == "identity":
      return scale * jnp.eye(hidden_size, dtype=dtype)
    return dense(k, shape)

  def cell(k: jax.Array, in_size: int) -> CellParams:
    k_xh, k_hh = jax.random.split(k)
    return CellParams(W_xh=dense(k_xh, (hidden_size, in_size)), W_hh=recurrent(k_hh),
                      b_h=jnp.zeros((hidden_size,), dtype))

  k_layers, k_out = jax.random.split(key)
  layers = tuple(
      tuple(cell(jax.random.fold_in(k_layers, l * num_dirs + d), input_size if l == 0 else width)
            for d in range(num_dirs))
      for l in range(num_layers))
  params = RNNParams(layers=layers, W_hy=dense(k_out, (output_size, width)),
                     b_y=jnp.zeros((output_size,), dtype))
  leaves = jax.tree.leaves(params)
  if checks.is_concrete(*leaves) and not all(bool(jnp.isfinite(leaf).all()) for leaf in leaves):
    raise ValueError(f"init.scale={scale!r} overflows {dtype.name}: some weights drawn are inf")
  return params
