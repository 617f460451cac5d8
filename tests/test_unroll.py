"""jaxrnn.unroll: the forward pass of every model against the NumPy reference (tests/reference.py),
jitted and not; lengths (NaN for a bad one under jit), h0, dtypes, compute options and argument
checks."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxrnn
import reference
from conftest import MODELS, all_equations, random_params, random_problem

T, B = 6, 4
LENGTHS = np.array([6, 2, 0, 4])

unroll = jax.jit(jaxrnn.unroll, static_argnames=("model", "compute"))
unroll_batch_first = jax.jit(jaxrnn.unroll_batch_first)


def reference_outputs(params, xs, h0=None, lengths=None, activation="tanh",
                      output_activation="identity"):
  """:class:`jaxrnn.Outputs` ``(hs, ys, final)`` of the NumPy reference, zero past each end."""
  params = reference.as_numpy(params)
  top, _, final, _ = reference.forward(params, xs, h0, lengths, activation)
  return jaxrnn.Outputs(top, reference.readout(params, top, output_activation, lengths), final)


FORWARD_CASES = [(1, False, "tanh", "identity"), (1, False, "relu", "softmax"),
                 (2, True, "tanh", "identity"), (2, True, "relu", "softmax"),
                 (3, True, "tanh", "sigmoid"), (2, False, "relu", "tanh")]


class TestUnrollVariants(chex.TestCase):
  """jaxrnn.unroll jitted and not (chex variants)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*FORWARD_CASES)
  def test_forward_matches_reference(self, num_layers, bidirectional, activation,
                                     output_activation):
    prob = random_problem(num_layers + 3 * bidirectional, T, B, num_layers=num_layers,
                          bidirectional=bidirectional)
    lengths = jnp.asarray(LENGTHS)
    model = jaxrnn.ModelSpec(activation=activation, output_activation=output_activation)
    run = self.variant(functools.partial(jaxrnn.unroll, model=model))
    got = run(prob.params, prob.batch.xs, prob.h0, lengths)
    want = reference_outputs(prob.params, prob.batch.xs, prob.h0, LENGTHS, activation,
                             output_activation)
    assert isinstance(got, jaxrnn.Outputs)
    chex.assert_trees_all_close(got, want, rtol=1e-12, atol=1e-13, strict=True)
    assert np.max(np.abs(want.hs)) > 0.1                      # a non-trivial comparison
    chex.assert_trees_all_equal(got.final[:, 2], prob.h0[:, 2])  # length 0: final is h0,
    chex.assert_trees_all_equal((got.hs[:, 2], got.ys[:, 2]),   # every output zero
                                (jnp.zeros_like(got.hs[:, 2]), jnp.zeros_like(got.ys[:, 2])))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODELS)
  def test_no_lengths_runs_every_step_and_zero_h0_by_default(self, num_layers, bidirectional):
    prob = random_problem(3, T, B, num_layers=num_layers, bidirectional=bidirectional)
    run = self.variant(jaxrnn.unroll)
    chex.assert_trees_all_close(run(prob.params, prob.batch.xs, prob.h0),
                                reference_outputs(prob.params, prob.batch.xs, prob.h0),
                                rtol=1e-12, atol=1e-13, strict=True)
    chex.assert_trees_all_close(run(prob.params, prob.batch.xs),
                                reference_outputs(prob.params, prob.batch.xs),
                                rtol=1e-12, atol=1e-13, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODELS)
  def test_a_length_outside_0_T_raises_eagerly_and_is_nan_under_jit(self, num_layers,
                                                                     bidirectional):
    """Under jit a length outside [0, T] cannot be checked: that sequence's hs, ys and final
    are NaN (never zeros or a clamped run), the other sequences are untouched."""
    prob = random_problem(9, T, B, num_layers=num_layers, bidirectional=bidirectional)
    run = self.variant(jaxrnn.unroll)
    for bad in (T + 1, -1):
      lengths = LENGTHS.copy()
      lengths[1] = bad
      if self.variant.type == chex.ChexVariantType.WITHOUT_JIT:
        with pytest.raises(ValueError, match="lengths"):
          run(prob.params, prob.batch.xs, prob.h0, jnp.asarray(lengths))
        continue
      hs, ys, final = run(prob.params, prob.batch.xs, prob.h0, jnp.asarray(lengths))
      for name, out in (("hs", hs[:, 1]), ("ys", ys[:, 1]), ("final", final[:, 1])):
        assert np.all(np.isnan(out)), (name, bad)
      rest = np.array([0, 2, 3])
      chex.assert_trees_all_close(
          (hs[:, rest], ys[:, rest], final[:, rest]),
          tuple(reference_outputs(prob.params, prob.batch.xs[:, rest], prob.h0[:, rest],
                                  LENGTHS[rest])),
          rtol=1e-12, atol=1e-13, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODELS)
  def test_batch_first_is_the_transpose(self, num_layers, bidirectional):
    prob = random_problem(4, T, B, num_layers=num_layers, bidirectional=bidirectional)
    lengths = jnp.asarray(LENGTHS)
    hs, ys, final = unroll(prob.params, prob.batch.xs, prob.h0, lengths)
    bf = self.variant(jaxrnn.unroll_batch_first)(prob.params, jnp.swapaxes(prob.batch.xs, 0, 1),
                                                 prob.h0, lengths)
    assert isinstance(bf, jaxrnn.Outputs)
    chex.assert_trees_all_equal(bf, jaxrnn.Outputs(jnp.swapaxes(hs, 0, 1),
                                                   jnp.swapaxes(ys, 0, 1), final))
    with pytest.raises(ValueError, match="xs"):
      jaxrnn.unroll_batch_first(prob.params, prob.batch.xs[0])


def unroll_objective(params, xs, h0, lengths, model, compute):
  """A scalar of every output of ``unroll`` so gradients flow through hs, ys and final."""
  hs, ys, final = jaxrnn.unroll(params, xs, h0, lengths, model=model, compute=compute)
  return jnp.sum(jnp.sin(hs)) + jnp.sum(jnp.log(ys + 2.0)) + jnp.sum(final ** 2)


unroll_grad = jax.jit(jax.grad(unroll_objective, argnums=(0, 1, 2)),
                      static_argnames=("model", "compute"))


GRAD_CASES = [(1, False, "relu", jnp.float64, 1e-10, 1e-12),
              (2, True, "tanh", jnp.float64, 1e-10, 1e-12),
              (1, False, "tanh", jnp.float32, 2e-5, 2e-6)]


@pytest.mark.parametrize("num_layers,bidirectional,activation,dtype,rtol,atol", GRAD_CASES)
def test_fused_gradient_equals_autodiff(num_layers, bidirectional, activation, dtype, rtol, atol):
  """jax.grad through the hand-derived backward equals jax.grad through lax.scan: params, xs, h0."""
  prob = random_problem(5, T, B, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype)
  model = jaxrnn.ModelSpec(activation=activation, output_activation="softmax")
  args = (prob.params, prob.batch.xs, prob.h0, jnp.asarray(LENGTHS), model)
  fused = unroll_grad(*args, jaxrnn.ComputeSpec(gradient="fused"))
  autodiff = unroll_grad(*args, jaxrnn.ComputeSpec(gradient="autodiff"))
  chex.assert_trees_all_equal_shapes_and_dtypes(fused, (prob.params, prob.batch.xs, prob.h0))
  chex.assert_trees_all_close(fused, autodiff, rtol=rtol, atol=atol, strict=True)
  for d in range(1 + bidirectional):
    assert np.max(np.abs(np.asarray(fused[0].layers[0][d].W_hh))) > 1e-3   # a real gradient
  assert np.max(np.abs(np.asarray(fused[2]))) > 1e-3
  if dtype == jnp.float64 and num_layers == 1:   # the scan_unroll variant, on the same problem
    unrolled = unroll_grad(*args, jaxrnn.ComputeSpec(scan_unroll=4))
    chex.assert_trees_all_close(unrolled, fused, rtol=1e-12, atol=1e-14, strict=True)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_scan_unroll_changes_nothing(num_layers, bidirectional):
  prob = random_problem(6, T, B, num_layers=num_layers, bidirectional=bidirectional)
  args = (prob.params, prob.batch.xs, prob.h0, jnp.asarray(LENGTHS))
  compute = jaxrnn.ComputeSpec(gradient="autodiff", scan_unroll=4)
  chex.assert_trees_all_close(unroll(*args, compute=compute), unroll(*args), rtol=1e-13,
                              atol=1e-15, strict=True)
  model = jaxrnn.ModelSpec(activation="tanh" if bidirectional else "relu",
                           output_activation="softmax")
  if bidirectional:                                # gradient of the 2-layer bidirectional model
    fused = unroll_grad(*args, model, jaxrnn.ComputeSpec(scan_unroll=3))
    chex.assert_trees_all_close(fused, unroll_grad(*args, model, jaxrnn.ComputeSpec()),
                                rtol=1e-12, atol=1e-14, strict=True)


def test_program_size_does_not_grow_with_sequence_length():
  """No Python loop over time: the traced gradient program, with every jaxpr inside it, is the
  same for T = 3 and T = 3000."""
  for num_layers, bidirectional in MODELS:
    params = random_params(0, num_layers=num_layers, bidirectional=bidirectional)

    def size(num_steps):
      xs = jnp.zeros((num_steps, 2, 3), jnp.float64)
      lengths = jnp.full(2, num_steps)
      fn = lambda p: jaxrnn.unroll(p, xs, lengths=lengths).ys.sum()
      return sum(1 for _ in all_equations(jax.make_jaxpr(jax.grad(fn))(params).jaxpr))

    assert size(3) == size(3000) > 40


def test_float32_by_default_and_float64_with_x64():
  kw = dict(num_layers=2, bidirectional=True)
  with jax.enable_x64(False):
    params = jaxrnn.init_params(jax.random.key(0), 2, 3, 1, **kw)
    out = unroll(params, jnp.ones((4, 1, 2)))
    assert {a.dtype for a in jax.tree.leaves((params, out))} == {jnp.dtype(jnp.float32)}
  params = jaxrnn.init_params(jax.random.key(0), 2, 3, 1, **kw)
  out = unroll(params, jnp.ones((4, 1, 2)))
  assert {a.dtype for a in jax.tree.leaves((params, out))} == {jnp.dtype(jnp.float64)}
  chex.assert_shape(out, [(4, 1, 6), (4, 1, 1), (4, 1, 3)])


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_bfloat16_compute_is_close_and_outputs_stay_in_param_dtype(num_layers, bidirectional):
  prob = random_problem(7, 16, 8, sizes=(4, 16, 3), num_layers=num_layers,
                        bidirectional=bidirectional, dtype=jnp.float32)
  lengths = jnp.array([16, 9, 12, 3, 16, 1, 7, 0])
  args = (prob.params, prob.batch.xs, prob.h0, lengths)
  default = unroll(*args)
  mixed = unroll(*args, compute=jaxrnn.ComputeSpec(dtype=jnp.bfloat16))
  chex.assert_trees_all_equal_shapes_and_dtypes(mixed, default)   # float32 out
  chex.assert_trees_all_close(mixed, default, rtol=0, atol=5e-2)  # bf16 rounding, and only that
  assert not all(np.array_equal(a, b) for a, b in zip(mixed, default))  # bf16 did run
  np.testing.assert_array_equal(mixed.ys[lengths[7]:, 7], 0)


def test_bad_arguments_name_the_argument():
  prob = random_problem(8, T, B, num_layers=2, bidirectional=True)
  params, xs = prob.params, prob.batch.xs
  with pytest.raises(ValueError, match="xs"):
    jaxrnn.unroll(params, xs[..., :2])
  with pytest.raises(ValueError, match="xs"):
    jaxrnn.unroll(params, xs[0])
  with pytest.raises(ValueError, match="xs"):
    jaxrnn.unroll(params, xs.at[1, 1, 1].set(jnp.nan))
  with pytest.raises(TypeError, match="xs"):
    jaxrnn.unroll(params, xs.astype(jnp.float32))
  with pytest.raises(TypeError, match="xs"):
    jaxrnn.unroll(params, np.asarray(xs).tolist())
  with pytest.raises(ValueError, match="h0"):
    jaxrnn.unroll(params, xs, prob.h0[:2])                   # L*D = 4 rows
  with pytest.raises(ValueError, match="h0"):
    jaxrnn.unroll(params, xs, prob.h0[:, :2])
  with pytest.raises(ValueError, match="lengths"):
    jaxrnn.unroll(params, xs, lengths=jnp.array([7, 1, 1, 1]))
  with pytest.raises(ValueError, match="lengths"):
    jaxrnn.unroll(params, xs, lengths=jnp.array([-1, 1, 1, 1]))
  with pytest.raises(ValueError, match="lengths"):
    jaxrnn.unroll(params, xs, lengths=jnp.array([1, 1, 1]))
  with pytest.raises(TypeError, match="lengths"):
    jaxrnn.unroll(params, xs, lengths=jnp.ones(4))
  with pytest.raises(TypeError, match="model"):
    jaxrnn.unroll(params, xs, model={"activation": "tanh"})
  with pytest.raises(TypeError, match="compute"):
    jaxrnn.unroll(params, xs, compute={"gradient": "fused"})
  with pytest.raises(TypeError, match="key"):
    jaxrnn.unroll(params, xs, key=0)
  bad = params._replace(layers=(params.layers[0], params.layers[1][:1]))
  with pytest.raises(ValueError, match="directions"):
    jaxrnn.unroll(bad, xs)
  cell = params.layers[1][0]
  bad = params._replace(layers=(params.layers[0], (cell._replace(W_xh=cell.W_xh[:, :5]),
                                                   params.layers[1][1])))
  with pytest.raises(ValueError, match=r"params\.layers\[1\]\[0\]\.W_xh"):
    jaxrnn.unroll(bad, xs)
  bad = params._replace(b_y=params.b_y.astype(jnp.float32))
  with pytest.raises(TypeError, match=r"params\.b_y"):
    jaxrnn.unroll(bad, xs)


def test_bad_specs_fail_where_they_are_built():
  """The specs validate themselves: a bad field raises when the spec is built, naming it."""
  with pytest.raises(ValueError, match="compute.scan_unroll"):
    jaxrnn.ComputeSpec(scan_unroll=0)
  with pytest.raises(ValueError, match="compute.gradient"):
    jaxrnn.ComputeSpec(gradient="magic")
  with pytest.raises(TypeError, match="compute.dtype"):
    jaxrnn.ComputeSpec(dtype=jnp.int32)
  with pytest.raises(ValueError, match="model.activation"):
    jaxrnn.ModelSpec(activation="sigmoid")
  with pytest.raises(ValueError, match="model.output_activation"):
    jaxrnn.ModelSpec(output_activation="relu")
