"""Test-suite set-up: float64 on, so gradient checks can hold to 1e-10.

Tests of float32 behaviour pass ``dtype=jnp.float32`` explicitly.
"""

import jax

jax.config.update("jax_enable_x64", True)
