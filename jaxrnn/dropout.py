"""Dropout masks drawn from an explicit ``jax.random`` key, for the whole batch at once.

Inverted dropout (Srivastava et al., 2014): a kept unit is scaled by
``1 / (1 - p)``, so ``E[m * x] = x``. The three kinds of
:class:`jaxrnn.ModelSpec` (``dropout`` between layers, a fresh mask per step;
variational ``input_dropout``, one ``[B, I_l]`` mask per cell; variational
``state_dropout``, one ``[H]`` mask per cell, folded in as ``W_hh diag(m)``)
are drawn once per batch, each (kind, layer, direction) from a key of its
own, so a chunked or split run uses the very masks of a plain one.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import checks
from jaxrnn.pytrees import Shape
from jaxrnn.spec import ModelSpec


class DropoutMasks(NamedTuple):
  """The masks of one forward pass; a field is ``None`` where its rate is 0.

  Attributes:
    between: per layer ``l < L-1``, ``[T, B, D*H]``.
    inputs: per layer and direction, ``[B, I_l]``.
    state: per layer and direction, ``[H]``.
  """
  between: tuple[jax.Array, ...] | None
  inputs: tuple[tuple[jax.Array, ...], ...] | None
  state: tuple[tuple[jax.Array, ...], ...] | None


def dropout_mask(key: jax.Array, rate: float, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """``m = bernoulli(1 - rate) / (1 - rate)``, entries in ``{0, 1 / (1 - rate)}``; ``shape``."""
  keep = jax.random.bernoulli(key, 1 - rate, shape)
  return keep.astype(dtype) / jnp.asarray(1 - rate, dtype)


def draw_masks(key: jax.Array | None, model: ModelSpec, shape: Shape, num_steps: int,
               batch: int, dtype: Any) -> DropoutMasks | None:
  """All dropout masks of a ``[T, B]`` forward pass of a model of ``shape``; ``None`` without a key."""
  if key is not None:
    checks.check_key("key", key)
  if key is None or not (model.dropout or model.input_dropout or model.state_dropout):
    return None
  num_layers, num_dirs, hidden = shape.num_layers, shape.num_directions, shape.hidden_size
  k_between, k_inputs, k_state = jax.random.split(key, 3)
  per_cell = lambda k, l, d: jax.random.fold_in(k, l * num_dirs + d)
  between = inputs = state = None
  if model.dropout:
    between = tuple(dropout_mask(jax.random.fold_in(k_between, l), model.dropout,
                                 (num_steps, batch, num_dirs * hidden), dtype)
                    for l in range(num_layers - 1))
  if model.input_dropout:
    widths = [shape.input_size] + [num_dirs * hidden] * (num_layers - 1)
    inputs = tuple(tuple(dropout_mask(per_cell(k_inputs, l, d), model.input_dropout,
                                      (batch, widths[l]), dtype) for d in range(num_dirs))
                   for l in range(num_layers))
  if model.state_dropout:
    state = tuple(tuple(dropout_mask(per_cell(k_state, l, d), model.state_dropout, (hidden,),
                                     dtype) for d in range(num_dirs))
                  for l in range(num_layers))
  return DropoutMasks(between, inputs, state)
