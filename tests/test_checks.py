"""Bad input fails early with an error that names what is wrong."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn


@pytest.fixture
def problem():
  params = jaxrnn.init_params(jax.random.key(0), 4, 5, 3, dtype=jnp.float32)
  xs = jnp.ones((6, 2, 4), jnp.float32)
  targets = jnp.zeros((6, 2), jnp.int32)
  return params, xs, targets


@pytest.mark.parametrize("call, error, pattern", [
    (lambda p, xs, t: jaxrnn.unroll(p, xs[0]), ValueError, r"xs must have shape \[T, B, I\]"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs[..., :3]), ValueError, r"xs has size 3 on axis 2.*input size I"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs.astype(jnp.int32)), TypeError, r"xs must have a floating-point dtype"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs.astype(jnp.float64)), TypeError, r"xs has dtype float64 but params"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs.at[2, 1, 0].set(jnp.nan)), ValueError, r"xs contains NaN"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs, h0=jnp.zeros((3, 5), jnp.float32)), ValueError, r"h0 has size 3 on axis 0.*batch size B"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs, h0=jnp.full((2, 5), jnp.inf, jnp.float32)), ValueError, r"h0 contains NaN or inf"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs, lengths=jnp.array([7, 1])), ValueError, r"lengths must lie in \[0, T=6\]"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs, lengths=jnp.array([1.0, 2.0])), TypeError, r"lengths must have an integer dtype"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs, lengths=jnp.array([1, 2, 3])), ValueError, r"lengths has size 3"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs, activation="sigmoid"), ValueError, r"unknown activation 'sigmoid'"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs, output_activation="gelu"), ValueError, r"unknown output_activation 'gelu'"),
    (lambda p, xs, t: jaxrnn.unroll(p, xs, backward="magic"), ValueError, r"unknown backward 'magic'"),
    (lambda p, xs, t: jaxrnn.unroll(p._replace(W_hh=p.W_hh[:4]), xs), ValueError, r"params.W_hh has size 5 on axis 1, but its number of rows H is 4"),
    (lambda p, xs, t: jaxrnn.unroll(p._replace(b_y=p.b_y[:2]), xs), ValueError, r"params.b_y has size 2.*O \(from W_hy\)"),
    (lambda p, xs, t: jaxrnn.unroll(p._replace(b_h=p.b_h.astype(jnp.float16)), xs), TypeError, r"params.b_h has dtype float16"),
    (lambda p, xs, t: jaxrnn.unroll(dict(p._asdict()), xs), TypeError, r"params must be an RNNParams"),
    (lambda p, xs, t: jaxrnn.rnn_cell(p, jnp.zeros((3, 5)), xs[0]), ValueError, r"x_t batch shape \(2,\) does not match h_prev"),
    (lambda p, xs, t: jaxrnn.sequence_loss(p, xs, t, loss="hinge"), ValueError, r"unknown loss 'hinge'"),
    (lambda p, xs, t: jaxrnn.sequence_loss(p, xs, t, reduction="max"), ValueError, r"unknown reduction 'max'"),
    (lambda p, xs, t: jaxrnn.sequence_loss(p, xs, t, output_activation="sigmoid"), ValueError, r"does not accept output_activation 'sigmoid'"),
    (lambda p, xs, t: jaxrnn.sequence_loss(p, xs, t.astype(jnp.float32)), TypeError, r"targets must be integer class indices"),
    (lambda p, xs, t: jaxrnn.sequence_loss(p, xs, t.at[0, 0].set(3)), ValueError, r"class indices in \[0, 3\)"),
    (lambda p, xs, t: jaxrnn.sequence_loss(p, xs, t[:5]), ValueError, r"targets has size 5 on axis 0.*number of steps T"),
    (lambda p, xs, t: jaxrnn.bptt(p, xs, t, target_mask=jnp.ones((6, 3))), ValueError, r"target_mask has size 3"),
    (lambda p, xs, t: jaxrnn.bptt(p, xs, jnp.zeros((6, 2, 3), jnp.float32).at[0, 0, 0].set(jnp.nan), loss="squared_error"), ValueError, r"targets contains NaN"),
    (lambda p, xs, t: jaxrnn.bptt(p, xs, jnp.zeros((6, 2, 2), jnp.float32), loss="squared_error"), ValueError, r"targets has size 2 on axis 2.*output size O"),
    (lambda p, xs, t: jaxrnn.init_params(jax.random.key(0), 0, 5, 3), ValueError, r"input_size must be a positive int"),
    (lambda p, xs, t: jaxrnn.init_params(jax.random.key(0), 4, 5, 3, scheme="xavier"), ValueError, r"unknown scheme 'xavier'"),
    (lambda p, xs, t: jaxrnn.init_params(jax.random.key(0), 4, 5, 3, dtype=jnp.int32), TypeError, r"dtype must be a floating-point dtype"),
    (lambda p, xs, t: jaxrnn.make_optimizer("lbfgs-magic"), ValueError, r"unknown optimizer"),
    (lambda p, xs, t: jaxrnn.make_optimizer("adam", clip_norm=0.0), ValueError, r"clip_norm must be positive"),
    (lambda p, xs, t: jaxrnn.gradient_flow(p, xs), ValueError, r"xs must have shape \[T, I\]"),
])
def test_bad_input_is_named(problem, call, error, pattern):
  with pytest.raises(error, match=pattern):
    call(*problem)


def test_masked_steps_may_hold_any_class_index(problem):
  """Padding past a sequence's end is not checked (a common -1 pad is fine)."""
  params, xs, targets = problem
  padded = targets.at[4:, 1].set(-1)
  loss = jaxrnn.sequence_loss(params, xs, padded, lengths=jnp.array([6, 4]))
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(
      loss, jaxrnn.sequence_loss(params, xs, targets, lengths=jnp.array([6, 4])), rtol=1e-6)
