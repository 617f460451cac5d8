"""Argument checks shared by the public API.

Every public function validates what it is given *before* tracing, so a bad
shape, dtype or name fails with a ``ValueError``/``TypeError`` that names the
offending argument instead of an XLA shape error (or, worse, a silent
broadcast). Checks use static shape information only, except
:func:`check_finite`, which looks at values and is skipped under ``jit``.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_choice(name: str, value: Any, choices: Container[str]) -> None:
  """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")


def check_rank(name: str, x: Any, rank: int, layout: str) -> None:
  """Raises ``ValueError`` unless ``x`` has ``rank`` dimensions (``layout`` names them)."""
  if jnp.ndim(x) != rank:
    raise ValueError(f"{name} must have shape {layout} (rank {rank}), got shape {jnp.shape(x)}")


def check_size(name: str, x: Any, axis: int, size: int, what: str) -> None:
  """Raises ``ValueError`` unless ``x.shape[axis] == size``; ``what`` says where ``size`` comes from."""
  got = jnp.shape(x)[axis]
  if got != size:
    raise ValueError(f"{name} has size {got} on axis {axis}, but {what} is {size} "
                     f"(shape {jnp.shape(x)})")


def check_floating(name: str, x: Any) -> None:
  """Raises ``TypeError`` unless ``x`` has a floating-point dtype."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating-point dtype, got {dtype}")


def check_same_dtype(name: str, x: Any, dtype: Any, what: str) -> None:
  """Raises ``TypeError`` unless ``x`` has ``dtype`` (no silent up/down-casting)."""
  got = jnp.result_type(x)
  if got != jnp.dtype(dtype):
    raise TypeError(f"{name} has dtype {got} but {what} has dtype {jnp.dtype(dtype)}; "
                    f"cast one of them explicitly")


def check_finite(name: str, x: Any) -> None:
  """Raises ``ValueError`` if a concrete ``x`` holds NaN or inf; a no-op on tracers."""
  if isinstance(x, jax.core.Tracer):
    return
  if not bool(np.all(np.isfinite(np.asarray(x)))):
    raise ValueError(f"{name} contains NaN or inf")
