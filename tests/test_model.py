"""Init, cell, unroll and losses: shapes, semantics, dtypes, masks (chex variants: jit and no-jit)."""

import functools

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings

import jaxrnn


def small_problem(num_steps=6, batch=3, sizes=(4, 5, 3), dtype=jnp.float64, seed=0):
  in_size, hidden, out_size = sizes
  params = jaxrnn.init_params(jax.random.key(seed), in_size, hidden, out_size,
                              scheme="glorot", dtype=dtype)
  xs = jax.random.normal(jax.random.key(seed + 1), (num_steps, batch, in_size), dtype)
  return params, xs


class CellTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("tanh", "relu")
  def test_cell_is_the_equation(self, activation):
    params, xs = small_problem()
    h_prev = jax.random.normal(jax.random.key(5), (3, 5), jnp.float64)
    cell = self.variant(functools.partial(jaxrnn.rnn_cell, activation=activation,
                                          output_activation="sigmoid"))
    h_t, y_t = cell(params, h_prev, xs[0])
    act = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0)}[activation]
    p = jax.tree.map(np.asarray, params)
    expected_h = act(np.asarray(xs[0]) @ p.W_xh.T + np.asarray(h_prev) @ p.W_hh.T + p.b_h)
    expected_y = 1 / (1 + np.exp(-(expected_h @ p.W_hy.T + p.b_y)))
    chex.assert_shape((h_t, y_t), [(3, 5), (3, 3)])
    np.testing.assert_allclose(h_t, expected_h, rtol=1e-12)
    np.testing.assert_allclose(y_t, expected_y, rtol=1e-12)

  @chex.variants(with_jit=True, without_jit=True)
  def test_cell_works_on_one_example_and_any_batch_shape(self):
    params, xs = small_problem()
    cell = self.variant(jaxrnn.rnn_cell)
    single_h, single_y = cell(params, jnp.zeros(5, jnp.float64), xs[0, 0])
    batch_h, batch_y = cell(params, jnp.zeros((2, 3, 5), jnp.float64),
                            jnp.broadcast_to(xs[0, 0], (2, 3, 4)))
    chex.assert_shape((single_h, single_y, batch_h, batch_y), [(5,), (3,), (2, 3, 5), (2, 3, 3)])
    np.testing.assert_allclose(batch_h[1, 2], single_h, rtol=1e-14)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("identity", "softmax", "tanh", "sigmoid")
  def test_unroll_equals_cell_under_scan(self, output_activation):
    params, xs = small_problem()
    h0 = jax.random.normal(jax.random.key(9), (3, 5), jnp.float64)
    cell = functools.partial(jaxrnn.rnn_cell, params, output_activation=output_activation)
    _, (hs, ys) = jax.lax.scan(lambda h, x: (cell(h, x)[0], cell(h, x)), h0, xs)
    got_hs, got_ys = self.variant(functools.partial(
        jaxrnn.unroll, output_activation=output_activation))(params, xs, h0)
    chex.assert_trees_all_close((got_hs, got_ys), (hs, ys), rtol=1e-12, atol=1e-14)


class UnrollTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_lengths_freeze_state_and_zero_outputs(self):
    params, xs = small_problem(num_steps=7, batch=3)
    lengths = jnp.array([7, 3, 0])
    hs, ys = self.variant(jaxrnn.unroll)(params, xs, lengths=lengths)
    for b, length in enumerate([7, 3, 0]):
      # Inside its length, a sequence is unrolled exactly as if it were alone.
      alone_hs, alone_ys = jaxrnn.unroll(params, xs[:max(length, 1), b:b + 1])
      np.testing.assert_allclose(hs[:length, b], alone_hs[:length, 0], rtol=1e-12)
      np.testing.assert_allclose(ys[:length, b], alone_ys[:length, 0], rtol=1e-12)
      # Past it, the state is frozen, exactly, at its last value (h0 = 0 when length is 0).
      frozen = hs[length - 1, b] if length else jnp.zeros(5)
      np.testing.assert_array_equal(hs[length:, b], jnp.broadcast_to(frozen, (7 - length, 5)))
      np.testing.assert_array_equal(ys[length:, b], 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_reverse_reads_each_sequence_from_its_own_end(self):
    params, xs = small_problem(num_steps=6, batch=2)
    lengths = jnp.array([6, 4])
    hs, _ = self.variant(functools.partial(jaxrnn.unroll, reverse=True))(
        params, xs, lengths=lengths)
    for b, length in enumerate([6, 4]):
      flipped_hs, _ = jaxrnn.unroll(params, xs[:length, b:b + 1][::-1])
      np.testing.assert_allclose(hs[:length, b], flipped_hs[::-1, 0], rtol=1e-12)
      np.testing.assert_array_equal(hs[length:, b], 0.0)     # padding: still h0

  def test_batch_first_is_the_transpose(self):
    params, xs = small_problem()
    hs, ys = jaxrnn.unroll(params, xs, lengths=jnp.array([6, 2, 5]))
    bf_hs, bf_ys = jaxrnn.unroll_batch_first(params, jnp.swapaxes(xs, 0, 1),
                                             lengths=jnp.array([6, 2, 5]))
    np.testing.assert_array_equal(bf_hs, jnp.swapaxes(hs, 0, 1))
    np.testing.assert_array_equal(bf_ys, jnp.swapaxes(ys, 0, 1))

  def test_program_size_does_not_grow_with_sequence_length(self):
    """No Python loop over time: the traced program is the same for T = 3 and T = 3000."""
    params, _ = small_problem()

    def num_equations(num_steps):
      xs = jnp.zeros((num_steps, 2, 4), jnp.float64)
      jaxpr = jax.make_jaxpr(jax.grad(lambda p: jaxrnn.unroll(p, xs)[1].sum()))(params)
      return len(jaxpr.eqns)

    assert num_equations(3) == num_equations(3000)

  def test_float32_by_default_and_float64_with_x64(self):
    with jax.enable_x64(False):
      params = jaxrnn.init_params(jax.random.key(0), 2, 3, 1)
      hs, ys = jaxrnn.unroll(params, jnp.ones((4, 1, 2)))
      assert {a.dtype for a in jax.tree.leaves((params, hs, ys))} == {jnp.dtype(jnp.float32)}
    params = jaxrnn.init_params(jax.random.key(0), 2, 3, 1)
    hs, ys = jaxrnn.unroll(params, jnp.ones((4, 1, 2)))
    assert {a.dtype for a in jax.tree.leaves((params, hs, ys))} == {jnp.dtype(jnp.float64)}

  @settings(max_examples=6, deadline=None)
  @given(num_steps=st.integers(1, 12), batch=st.integers(1, 5), in_size=st.integers(1, 6),
         hidden=st.integers(1, 6), out_size=st.integers(1, 6), reverse=st.booleans())
  def test_shapes(self, num_steps, batch, in_size, hidden, out_size, reverse):
    params = jaxrnn.init_params(jax.random.key(0), in_size, hidden, out_size)
    xs = jnp.ones((num_steps, batch, in_size))
    lengths = jnp.arange(batch) % (num_steps + 1)
    hs, ys = jaxrnn.unroll(params, xs, lengths=lengths, reverse=reverse)
    chex.assert_shape(hs, (num_steps, batch, hidden))
    chex.assert_shape(ys, (num_steps, batch, out_size))
    chex.assert_tree_all_finite((hs, ys))


class InitTest(chex.TestCase):

  @parameterized.parameters(*jaxrnn.SCHEMES)
  def test_shapes_dtypes_and_determinism(self, scheme):
    a = jaxrnn.init_params(jax.random.key(3), 4, 6, 2, scheme=scheme, dtype=jnp.float32)
    b = jaxrnn.init_params(jax.random.key(3), 4, 6, 2, scheme=scheme, dtype=jnp.float32)
    c = jaxrnn.init_params(jax.random.key(4), 4, 6, 2, scheme=scheme, dtype=jnp.float32)
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a.W_xh, c.W_xh)
    chex.assert_shape(list(a), [(6, 4), (6, 6), (2, 6), (6,), (2,)])
    chex.assert_type(list(a), jnp.float32)

  def test_orthogonal_and_identity_recurrent_weights(self):
    orth = jaxrnn.init_params(jax.random.key(0), 3, 8, 2, scheme="orthogonal").W_hh
    np.testing.assert_allclose(orth @ orth.T, np.eye(8), atol=1e-12)
    ident = jaxrnn.init_params(jax.random.key(0), 3, 8, 2, scheme="identity").W_hh
    np.testing.assert_array_equal(ident, np.eye(8))

  def test_glorot_limit(self):
    w = jaxrnn.init_params(jax.random.key(0), 30, 50, 2, scheme="glorot").W_xh
    limit = np.sqrt(6 / (30 + 50))
    assert float(jnp.max(jnp.abs(w))) <= limit
    assert float(jnp.max(jnp.abs(w))) > 0.9 * limit


class LossTest(chex.TestCase):

  def test_cross_entropy_is_the_sum_of_minus_log_probabilities(self):
    params, xs = small_problem()
    targets = jnp.array([[0, 1, 2]] * 6)
    _, probs = jaxrnn.unroll(params, xs, output_activation="softmax")
    expected = -np.sum(np.log(np.take_along_axis(np.asarray(probs), targets[..., None], -1)))
    for out in ("identity", "softmax"):
      got = jaxrnn.sequence_loss(params, xs, targets, output_activation=out)
      np.testing.assert_allclose(got, expected, rtol=1e-12)

  def test_squared_error_masked_mean(self):
    params, xs = small_problem()
    targets = jax.random.normal(jax.random.key(2), (6, 3, 3), jnp.float64)
    lengths = jnp.array([6, 2, 0])
    _, ys = jaxrnn.unroll(params, xs, output_activation="tanh")
    errors = np.sum((np.asarray(ys) - np.asarray(targets)) ** 2, axis=-1)   # [T, B]
    live = np.arange(6)[:, None] < np.asarray(lengths)[None]
    got = jaxrnn.sequence_loss(params, xs, targets, loss="squared_error", lengths=lengths,
                               output_activation="tanh", reduction="mean")
    np.testing.assert_allclose(got, errors[live].sum() / live.sum(), rtol=1e-12)
    total = jaxrnn.sequence_loss(params, xs, targets, loss="squared_error", lengths=lengths,
                                 output_activation="tanh", reduction="sum")
    np.testing.assert_allclose(total, errors[live].sum(), rtol=1e-12)

  def test_target_mask_selects_steps(self):
    params, xs = small_problem()
    targets = jnp.ones((6, 3), jnp.int32)
    last = jnp.zeros((6, 3), bool).at[-1].set(True)
    got = jaxrnn.sequence_loss(params, xs, targets, target_mask=last)
    alone = jaxrnn.step_losses(jaxrnn.unroll(params, xs)[1], targets, "cross_entropy", "identity")
    np.testing.assert_allclose(got, alone[-1].sum(), rtol=1e-12)

  def test_all_masked_mean_is_zero_not_nan(self):
    params, xs = small_problem()
    got = jaxrnn.sequence_loss(params, xs, jnp.zeros((6, 3), int), lengths=jnp.zeros(3, int),
                               reduction="mean")
    assert float(got) == 0.0
