"""The pytrees of jaxrnn: the parameters of every model, and a batch of sequences.

Layer ``l`` has one Elman RNN per direction ``d`` (0 forward in time, 1
backward), each with the seed's three arrays, and the read-out is shared:
``h^{l,d}_t = act(W_xh^{l,d} x^l_t + W_hh^{l,d} h^{l,d}_{t-1} + b_h^{l,d})`` (``t+1`` for
``d = 1``),
``x^0_t = x_t``, ``x^{l+1}_t = [h^{l,0}_t; h^{l,1}_t]``, ``y_t = out_act(W_hy x^L_t + b_y)``.
With ``L = D = 1`` this is the seed's model.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class CellParams(NamedTuple):
  """One layer in one direction: ``W_xh [H, I_l]``, ``W_hh [H, H]``, ``b_h [H]``."""
  W_xh: jax.Array
  W_hh: jax.Array
  b_h: jax.Array


class RNNParams(NamedTuple):
  """An Elman RNN of ``L >= 1`` layers and ``D = 1`` or ``2`` directions: ``layers[l][d]``, the
  :class:`CellParams` of layer ``l`` (reading ``I`` inputs, or ``D*H`` above layer 0) in
  direction ``d``, and the read-out ``W_hy [O, D*H]``, ``b_y [O]``."""
  layers: tuple[tuple[CellParams, ...], ...]
  W_hy: jax.Array
  b_y: jax.Array


class Batch(NamedTuple):
  """One batch of sequences, time-major: inputs ``xs [T, B, I]``, ``targets`` (``[T, B]``
  classes or ``[T, B, O]`` values), ``lengths [B]`` (``None``: all ``T``) and ``target_mask
  [T, B]``, 1 on the steps that have a target (``None``: all).

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> batch = jaxrnn.Batch(jnp.ones((6, 4, 3)), jnp.zeros((6, 4), int),    # xs, classes
    ...                      lengths=jnp.array([6, 5, 2, 1]))
    >>> live = jnp.arange(6)[:, None] < batch.lengths                      # [T, B]
    >>> by_lengths, _ = jaxrnn.sequence_loss(params, batch)
    >>> by_mask, _ = jaxrnn.sequence_loss(params, batch._replace(lengths=None, target_mask=live))
    >>> jnp.allclose(by_lengths, by_mask)            # the same steps count (one direction)
    Array(True, dtype=bool)
  """
  xs: jax.Array
  targets: jax.Array | None = None
  lengths: jax.Array | None = None
  target_mask: jax.Array | None = None


class Shape(NamedTuple):
  """The sizes of an :class:`RNNParams`: input ``I``, hidden ``H``, output ``O``, layers ``L``,
  directions ``D``."""
  input_size: int
  hidden_size: int
  output_size: int
  num_layers: int
  num_directions: int


def shape_of(params: RNNParams) -> Shape:
  """The :class:`Shape` of consistent ``params`` (:func:`jaxrnn.checks.check_params` checks them)."""
  cell = params.layers[0][0]
  return Shape(jnp.shape(cell.W_xh)[1], jnp.shape(cell.W_hh)[0], jnp.shape(params.W_hy)[0],
               len(params.layers), len(params.layers[0]))


def default_dtype() -> jnp.dtype:
  """float64 when ``jax_enable_x64`` is on, float32 otherwise."""
  return jnp.dtype(jnp.result_type(float))
