"""Dropout masks driven by an explicit ``jax.random`` key.

Inverted dropout (Srivastava et al., 2014): a kept unit is scaled by
``1 / (1 - p)``, so ``E[m * x] = x`` and evaluation needs no rescaling.
:mod:`jaxrnn.stacked` draws these masks three ways:

* between layers (torch's ``nn.RNN(dropout=p)``): a fresh mask for every step,
  sequence and unit of each layer's output except the last layer's;
* variational on inputs (Gal & Ghahramani, 2016; Keras' ``dropout``): one
  ``[B, I]`` mask per layer and direction, the same at every time step;
* variational on the state: one ``[H]`` mask per layer and direction, the same
  at every time step and for the whole batch, folded into the recurrent
  weights as ``W_hh diag(m)`` so the hand-derived BPTT still applies.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def check_rate(name: str, rate: float) -> None:
  """Raises ``ValueError`` unless ``0 <= rate < 1``."""
  if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
    raise ValueError(f"{name} must be a float in [0, 1), got {rate!r}")


def dropout_mask(key: jax.Array, rate: float, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """``m = bernoulli(1 - rate) / (1 - rate)``, entries in ``{0, 1 / (1 - rate)}``; ``shape``."""
  keep = jax.random.bernoulli(key, 1 - rate, shape)
  return keep.astype(dtype) / jnp.asarray(1 - rate, dtype)
