"""Parameters of the Elman RNN and the schemes that initialise them.

The model is ``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``,
``y_t = out_act(W_hy h_t + b_y)``; :class:`RNNParams` holds exactly those five
arrays, in the seed's (column-vector) orientation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks

SCHEMES = ("normal", "glorot", "orthogonal", "identity")


class RNNParams(NamedTuple):
  """The parameters of an Elman RNN, a pytree of five arrays.

  Attributes:
    W_xh: input-to-hidden weights, ``[H, I]``.
    W_hh: hidden-to-hidden (recurrent) weights, ``[H, H]``.
    W_hy: hidden-to-output weights, ``[O, H]``.
    b_h: hidden bias, ``[H]``.
    b_y: output bias, ``[O]``.
  """
  W_xh: jax.Array
  W_hh: jax.Array
  W_hy: jax.Array
  b_h: jax.Array
  b_y: jax.Array


def default_dtype() -> jnp.dtype:
  """float64 when ``jax_enable_x64`` is on, float32 otherwise."""
  return jnp.dtype(jnp.result_type(float))


def init_params(key: jax.Array, input_size: int, hidden_size: int, output_size: int,
                scheme: str = "normal", dtype: Any = None, scale: float = 0.01) -> RNNParams:
  """Creates the parameters of an Elman RNN from a ``jax.random`` key.

  Schemes (biases are always zero):

  * ``"normal"``: every weight ``~ N(0, 1) * scale``; with the default
    ``scale=0.01`` this is the seed's ``np.random.randn(...) * 0.01``.
  * ``"glorot"``: every weight Glorot/Xavier-uniform (Glorot & Bengio, 2010).
  * ``"orthogonal"``: ``W_hh`` a random orthogonal matrix (Saxe et al., 2014),
    ``W_xh`` and ``W_hy`` Glorot-uniform.
  * ``"identity"``: ``W_hh = I`` (the IRNN of Le, Jaitly & Hinton, 2015, meant
    for ReLU), ``W_xh`` and ``W_hy`` Glorot-uniform.

  Args:
    key: a ``jax.random`` key; equal keys give equal parameters.
    input_size: ``I``, the size of each ``x_t``.
    hidden_size: ``H``, the size of each ``h_t``.
    output_size: ``O``, the size of each ``y_t``.
    scheme: one of :data:`SCHEMES`.
    dtype: a floating dtype; default float32 (float64 when x64 is enabled).
    scale: standard deviation of the ``"normal"`` scheme.

  Returns:
    :class:`RNNParams` with ``W_xh [H, I]``, ``W_hh [H, H]``, ``W_hy [O, H]``,
    ``b_h [H]``, ``b_y [O]``.

  Example:
    >>> params = init_params(jax.random.key(0), 3, 5, 2)
    >>> params.W_hh.shape
    (5, 5)
  """
  for name, size in (("input_size", input_size), ("hidden_size", hidden_size),
                     ("output_size", output_size)):
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
      raise ValueError(f"{name} must be a positive int, got {size!r}")
  _checks.check_choice("scheme", scheme, SCHEMES)
  dtype = default_dtype() if dtype is None else jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")

  k_xh, k_hh, k_hy = jax.random.split(key, 3)
  shapes = {"W_xh": (hidden_size, input_size), "W_hh": (hidden_size, hidden_size),
            "W_hy": (output_size, hidden_size)}
  keys = {"W_xh": k_xh, "W_hh": k_hh, "W_hy": k_hy}
  glorot = jax.nn.initializers.glorot_uniform()

  def weight(name: str) -> jax.Array:
    if scheme == "normal":
      return scale * jax.random.normal(keys[name], shapes[name], dtype)
    if name == "W_hh" and scheme == "orthogonal":
      return jax.nn.initializers.orthogonal()(keys[name], shapes[name], dtype)
    if name == "W_hh" and scheme == "identity":
      return jnp.eye(hidden_size, dtype=dtype)
    return glorot(keys[name], shapes[name], dtype)

  return RNNParams(W_xh=weight("W_xh"), W_hh=weight("W_hh"), W_hy=weight("W_hy"),
                   b_h=jnp.zeros((hidden_size,), dtype), b_y=jnp.zeros((output_size,), dtype))


def check_params(params: RNNParams) -> tuple[int, int, int]:
  """Checks that ``params`` is a consistent :class:`RNNParams`; returns ``(I, H, O)``.

  Raises:
    ValueError: a weight or bias has the wrong rank or a size that disagrees
      with the others.
    TypeError: ``params`` is not an ``RNNParams`` or mixes dtypes.
  """
  if not isinstance(params, RNNParams):
    raise TypeError(f"params must be an RNNParams, got {type(params).__name__}")
  _checks.check_rank("params.W_hh", params.W_hh, 2, "[H, H]")
  hidden = jnp.shape(params.W_hh)[0]
  _checks.check_size("params.W_hh", params.W_hh, 1, hidden, "its number of rows H")
  _checks.check_rank("params.W_xh", params.W_xh, 2, "[H, I]")
  _checks.check_size("params.W_xh", params.W_xh, 0, hidden, "H (from W_hh)")
  _checks.check_rank("params.W_hy", params.W_hy, 2, "[O, H]")
  _checks.check_size("params.W_hy", params.W_hy, 1, hidden, "H (from W_hh)")
  _checks.check_rank("params.b_h", params.b_h, 1, "[H]")
  _checks.check_size("params.b_h", params.b_h, 0, hidden, "H (from W_hh)")
  _checks.check_rank("params.b_y", params.b_y, 1, "[O]")
  out = jnp.shape(params.W_hy)[0]
  _checks.check_size("params.b_y", params.b_y, 0, out, "O (from W_hy)")
  _checks.check_floating("params.W_hh", params.W_hh)
  dtype = jnp.result_type(params.W_hh)
  for name in ("W_xh", "W_hy", "b_h", "b_y"):
    _checks.check_same_dtype(f"params.{name}", getattr(params, name), dtype, "params.W_hh")
  return jnp.shape(params.W_xh)[1], hidden, out
