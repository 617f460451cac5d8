"""Generated tasks that need memory, as :class:`jaxrnn.Batch` es.

Every generator is a pure function of a ``jax.random`` key: the same key gives
the same batch, so a run is reproducible from its seed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn.init import default_dtype
from jaxrnn.train import Batch


def adding_problem(key: jax.Array, batch_size: int, num_steps: int, dtype=None) -> Batch:
  """Hochreiter & Schmidhuber's (1997) adding problem.

  Each step carries a value ``u ~ U(0, 1)`` and a marker; exactly two markers
  are 1, one in each half of the sequence. The target, read at the last step
  only, is the sum of the two marked values. Predicting the mean (1.0) gives an
  MSE of ``1/6 ~ 0.167``; doing better needs memory over ``num_steps`` steps.

  Returns:
    ``Batch(xs [T, B, 2], targets [T, B, 1], target_mask [T, B])`` with the
    target at step ``T - 1`` only (``targets`` holds it at every step).
  """
  if num_steps < 2:
    raise ValueError(f"num_steps must be at least 2, got {num_steps}")
  dtype = default_dtype() if dtype is None else dtype
  k_val, k_first, k_second = jax.random.split(key, 3)
  half = num_steps // 2
  values = jax.random.uniform(k_val, (num_steps, batch_size), dtype)           # [T, B]
  first = jax.random.randint(k_first, (batch_size,), 0, half)
  second = jax.random.randint(k_second, (batch_size,), half, num_steps)
  steps = jnp.arange(num_steps)[:, None]
  markers = ((steps == first) | (steps == second)).astype(dtype)               # [T, B]
  total = jnp.sum(values * markers, axis=0)                                     # [B]
  xs = jnp.stack([values, markers], axis=-1)                                    # [T, B, 2]
  targets = jnp.broadcast_to(total[None, :, None], (num_steps, batch_size, 1))
  target_mask = (steps == num_steps - 1) & jnp.ones((1, batch_size), bool)      # [T, B]
  return Batch(xs=xs, targets=targets, target_mask=target_mask)
