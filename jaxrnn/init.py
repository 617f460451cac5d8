"""Initialising an Elman RNN of any depth and direction from a ``jax.random`` key.

The parameter pytree is :class:`jaxrnn.RNNParams` (:mod:`jaxrnn.params`);
every (layer, direction) gets its ``W_xh``, ``W_hh``, ``b_h`` by the same
scheme, and the read-out its ``W_hy``, ``b_y``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn import checks
from jaxrnn.params import CellParams, RNNParams, default_dtype
from jaxrnn.spec import SCHEMES, Scheme

IRNN_STDDEV = 0.001


def init_params(key: jax.Array, input_size: int, hidden_size: int, output_size: int,
                scheme: Scheme = "normal", dtype: Any = None, scale: float = 0.01, *,
                num_layers: int = 1, bidirectional: bool = False,
                gain: float = 1.0) -> RNNParams:
  """Creates the parameters of an Elman RNN; biases are always zero.

  Schemes, for every (layer, direction) and the read-out:

  * ``"normal"``: every weight ``~ N(0, scale^2)``; with the default
    ``scale=0.01`` this is the seed's ``np.random.randn(...) * 0.01``.
  * ``"glorot"``: every weight Glorot/Xavier-uniform (Glorot & Bengio, 2010).
  * ``"orthogonal"``: ``W_hh = gain * Q`` with ``Q`` a random orthogonal
    matrix (Saxe et al., 2014); ``W_xh`` and ``W_hy`` Glorot-uniform.
  * ``"identity"``: the IRNN of Le, Jaitly & Hinton (2015), meant for ReLU:
    ``W_hh = gain * I`` (the identity, or with ``gain < 1`` its scaled
    version), ``W_xh`` and ``W_hy ~ N(0, 0.001^2)``, so that the network
    starts near the trivial solution that copies its state forward.

  Args:
    key: a ``jax.random`` key; equal keys give equal parameters.
    input_size: ``I``, the size of each ``x_t``.
    hidden_size: ``H``, the size of each ``h_t`` in every layer and direction.
    output_size: ``O``, the size of each ``y_t``.
    scheme: one of :data:`jaxrnn.SCHEMES`.
    dtype: a floating dtype; default float32 (float64 when x64 is enabled).
    scale: standard deviation of the ``"normal"`` scheme.
    num_layers: ``L``, the number of stacked layers.
    bidirectional: ``D = 2`` directions per layer (torch's ``bidirectional``).
    gain: multiplies ``W_hh`` of the ``"orthogonal"`` and ``"identity"`` schemes.

  Returns:
    :class:`jaxrnn.RNNParams`: ``layers[l][d]`` with ``W_xh [H, I or D*H]``,
    ``W_hh [H, H]``, ``b_h [H]``; ``W_hy [O, D*H]``, ``b_y [O]``.

  Example:
    >>> params = init_params(jax.random.key(0), 3, 5, 2)
    >>> params.layers[0][0].W_hh.shape, params.W_hy.shape
    ((5, 5), (2, 5))
    >>> deep = init_params(jax.random.key(0), 3, 5, 2, num_layers=2, bidirectional=True)
    >>> deep.layers[1][1].W_xh.shape, deep.W_hy.shape
    ((5, 10), (2, 10))
  """
  for name, size in (("input_size", input_size), ("hidden_size", hidden_size),
                     ("output_size", output_size), ("num_layers", num_layers)):
    checks.check_positive_int(name, size)
  checks.check_choice("scheme", scheme, SCHEMES)
  checks.check_positive_number("scale", scale)
  checks.check_positive_number("gain", gain)
  if not isinstance(bidirectional, bool):
    raise TypeError(f"bidirectional must be a bool, got {bidirectional!r}")
  dtype = default_dtype() if dtype is None else jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
  num_dirs = 2 if bidirectional else 1
  width = num_dirs * hidden_size
  glorot = jax.nn.initializers.glorot_uniform()

  def dense(k: jax.Array, shape: tuple[int, int]) -> jax.Array:
    if scheme == "normal":
      return scale * jax.random.normal(k, shape, dtype)
    if scheme == "identity":
      return IRNN_STDDEV * jax.random.normal(k, shape, dtype)
    return glorot(k, shape, dtype)

  def recurrent(k: jax.Array) -> jax.Array:
    shape = (hidden_size, hidden_size)
    if scheme == "orthogonal":
      return gain * jax.nn.initializers.orthogonal()(k, shape, dtype)
    if scheme == "identity":
      return gain * jnp.eye(hidden_size, dtype=dtype)
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
  return RNNParams(layers=layers, W_hy=dense(k_out, (output_size, width)),
                   b_y=jnp.zeros((output_size,), dtype))
