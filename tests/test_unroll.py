"""jaxrnn.unroll: the forward pass of every model against a NumPy loop per sequence, layer and
direction; lengths, h0, dtypes, compute options and argument checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from conftest import MODELS, random_params, random_problem

T, B = 6, 4
LENGTHS = np.array([6, 2, 0, 4])

NP_ACT = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0)}


def np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


NP_OUT = {"identity": lambda z: z, "tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
          "softmax": np_softmax}


def numpy_unroll(params, xs, h0=None, lengths=None, activation="tanh",
                 output_activation="identity", masks=None):
  """The model as plain loops: per sequence, per layer, per direction over that sequence's own
  live steps only (the reverse direction starts at the sequence's last step).

  ``masks``: optional ``jaxrnn.dropout.DropoutMasks`` to apply (between, inputs, state).
  Returns ``(hs [T, B, D*H], ys [T, B, O], final [L*D, B, H])`` as NumPy float64, zero past
  each sequence's end.
  """
  act = NP_ACT[activation]
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  xs = np.asarray(xs, np.float64)
  num_steps, batch = xs.shape[:2]
  num_dirs, hidden = len(p.layers[0]), p.layers[0][0].W_hh.shape[0]
  h0 = np.zeros((len(p.layers) * num_dirs, batch, hidden)) if h0 is None else np.asarray(h0)
  lengths = np.full(batch, num_steps) if lengths is None else np.asarray(lengths)
  m = None if masks is None else jax.tree.map(np.asarray, masks)
  hs = np.zeros((num_steps, batch, num_dirs * hidden))
  ys = np.zeros((num_steps, batch, p.W_hy.shape[0]))
  final = h0.copy()
  for b in range(batch):
    n = int(lengths[b])
    x = xs[:n, b]
    for l, layer in enumerate(p.layers):
      outs = []
      for d, cell in enumerate(layer):
        x_d = x if m is None or m.inputs is None else x * m.inputs[l][d][b]
        W_hh = cell.W_hh if m is None or m.state is None else cell.W_hh * m.state[l][d]
        h = h0[l * num_dirs + d, b]
        out = np.zeros((n, hidden))
        for t in (range(n) if d == 0 else reversed(range(n))):
          h = act(cell.W_xh @ x_d[t] + W_hh @ h + cell.b_h)
          out[t] = h
        final[l * num_dirs + d, b] = h
        outs.append(out)
      x = np.concatenate(outs, -1)
      if m is not None and m.between is not None and l < len(p.layers) - 1:
        x = x * m.between[l][:n, b]
    hs[:n, b] = x
    ys[:n, b] = NP_OUT[output_activation](x @ p.W_hy.T + p.b_y)
  return hs, ys, final


unroll = jax.jit(jaxrnn.unroll, static_argnames=("model", "compute"))
unroll_batch_first = jax.jit(jaxrnn.unroll_batch_first)


FORWARD_CASES = [(1, False, "tanh", "identity"), (1, False, "relu", "softmax"),
                 (2, True, "tanh", "identity"), (2, True, "relu", "softmax"),
                 (3, True, "tanh", "sigmoid"), (2, False, "relu", "tanh")]


@pytest.mark.parametrize("num_layers,bidirectional,activation,output_activation", FORWARD_CASES)
def test_forward_matches_numpy_loop(num_layers, bidirectional, activation, output_activation):
  prob = random_problem(num_layers + 3 * bidirectional, T, B, num_layers=num_layers,
                        bidirectional=bidirectional)
  lengths = jnp.asarray(LENGTHS)
  model = jaxrnn.ModelSpec(activation=activation, output_activation=output_activation)
  hs, ys, final = unroll(prob.params, prob.batch.xs, prob.h0, lengths, model=model)
  ref = numpy_unroll(prob.params, prob.batch.xs, prob.h0, lengths, activation, output_activation)
  for got, want in zip((hs, ys, final), ref):
    assert got.shape == want.shape and got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-13)
  assert np.max(np.abs(ref[0])) > 0.1                        # a non-trivial comparison
  np.testing.assert_array_equal(final[:, 2], prob.h0[:, 2])  # length 0: final is h0, all zero
  np.testing.assert_array_equal(hs[:, 2], 0)
  np.testing.assert_array_equal(ys[:, 2], 0)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_no_lengths_runs_every_step(num_layers, bidirectional):
  prob = random_problem(3, T, B, num_layers=num_layers, bidirectional=bidirectional)
  got = unroll(prob.params, prob.batch.xs, prob.h0)
  ref = numpy_unroll(prob.params, prob.batch.xs, prob.h0)
  for a, b in zip(got, ref):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_batch_first_is_the_transpose(num_layers, bidirectional):
  prob = random_problem(4, T, B, num_layers=num_layers, bidirectional=bidirectional)
  lengths = jnp.asarray(LENGTHS)
  hs, ys, final = unroll(prob.params, prob.batch.xs, prob.h0, lengths)
  bf = unroll_batch_first(prob.params, jnp.swapaxes(prob.batch.xs, 0, 1), prob.h0, lengths)
  np.testing.assert_array_equal(bf.hs, jnp.swapaxes(hs, 0, 1))
  np.testing.assert_array_equal(bf.ys, jnp.swapaxes(ys, 0, 1))
  np.testing.assert_array_equal(bf.final, final)
  with pytest.raises(ValueError, match="xs"):
    jaxrnn.unroll_batch_first(prob.params, prob.batch.xs[0])


def unroll_objective(params, xs, h0, lengths, model, compute):
  """A scalar of every output of ``unroll`` so gradients flow through hs, ys and final."""
  hs, ys, final = jaxrnn.unroll(params, xs, h0, lengths, model=model, compute=compute)
  return jnp.sum(jnp.sin(hs)) + jnp.sum(jnp.log(ys + 2.0)) + jnp.sum(final ** 2)


unroll_grad = jax.jit(jax.grad(unroll_objective, argnums=(0, 1, 2)),
                      static_argnames=("model", "compute"))


def assert_rel_close(actual, expected, rtol):
  """``max |a - e| <= rtol * max |e|`` leaf by leaf, same shapes and dtypes."""
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    a, e = np.asarray(a), np.asarray(e)
    assert a.shape == e.shape and a.dtype == e.dtype
    assert np.max(np.abs(a - e), initial=0) <= rtol * max(np.max(np.abs(e), initial=0), 1e-30)


GRAD_CASES = [(1, False, "relu", jnp.float64, 1e-10), (2, True, "tanh", jnp.float64, 1e-10),
              (1, False, "tanh", jnp.float32, 2e-5)]


@pytest.mark.parametrize("num_layers,bidirectional,activation,dtype,rtol", GRAD_CASES)
def test_fused_gradient_equals_autodiff(num_layers, bidirectional, activation, dtype, rtol):
  """jax.grad through the hand-derived backward equals jax.grad through lax.scan: params, xs, h0."""
  prob = random_problem(5, T, B, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype)
  model = jaxrnn.ModelSpec(activation=activation, output_activation="softmax")
  args = (prob.params, prob.batch.xs, prob.h0, jnp.asarray(LENGTHS), model)
  fused = unroll_grad(*args, jaxrnn.ComputeSpec(gradient="fused"))
  autodiff = unroll_grad(*args, jaxrnn.ComputeSpec(gradient="autodiff"))
  assert_rel_close(fused, autodiff, rtol)
  for d in range(1 + bidirectional):
    assert np.max(np.abs(np.asarray(fused[0].layers[0][d].W_hh))) > 1e-3   # a real gradient
  assert np.max(np.abs(np.asarray(fused[2]))) > 1e-3
  if dtype == jnp.float64 and num_layers == 1:   # the scan_unroll variant, on the same problem
    unrolled = unroll_grad(*args, jaxrnn.ComputeSpec(scan_unroll=4))
    assert_rel_close(unrolled, fused, 1e-12)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_scan_unroll_changes_nothing(num_layers, bidirectional):
  prob = random_problem(6, T, B, num_layers=num_layers, bidirectional=bidirectional)
  args = (prob.params, prob.batch.xs, prob.h0, jnp.asarray(LENGTHS))
  compute = jaxrnn.ComputeSpec(gradient="autodiff", scan_unroll=4)
  assert_rel_close(unroll(*args, compute=compute), unroll(*args), 1e-13)
  model = jaxrnn.ModelSpec(activation="tanh" if bidirectional else "relu",
                           output_activation="softmax")
  if bidirectional:                                # gradient of the 2-layer bidirectional model
    fused = unroll_grad(*args, model, jaxrnn.ComputeSpec(scan_unroll=3))
    assert_rel_close(fused, unroll_grad(*args, model, jaxrnn.ComputeSpec()), 1e-12)


def test_program_size_does_not_grow_with_sequence_length():
  """No Python loop over time: the traced gradient program is the same for T = 3 and T = 3000."""
  for num_layers, bidirectional in MODELS:
    params = random_params(0, num_layers=num_layers, bidirectional=bidirectional)

    def num_equations(num_steps):
      xs = jnp.zeros((num_steps, 2, 3), jnp.float64)
      lengths = jnp.full(2, num_steps)
      fn = lambda p: jaxrnn.unroll(p, xs, lengths=lengths).ys.sum()
      return len(jax.make_jaxpr(jax.grad(fn))(params).eqns)

    assert num_equations(3) == num_equations(3000)


def test_float32_by_default_and_float64_with_x64():
  kw = dict(num_layers=2, bidirectional=True)
  with jax.enable_x64(False):
    params = jaxrnn.init_params(jax.random.key(0), 2, 3, 1, **kw)
    out = unroll(params, jnp.ones((4, 1, 2)))
    assert {a.dtype for a in jax.tree.leaves((params, out))} == {jnp.dtype(jnp.float32)}
  params = jaxrnn.init_params(jax.random.key(0), 2, 3, 1, **kw)
  out = unroll(params, jnp.ones((4, 1, 2)))
  assert {a.dtype for a in jax.tree.leaves((params, out))} == {jnp.dtype(jnp.float64)}


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_bfloat16_compute_is_close_and_outputs_stay_in_param_dtype(num_layers, bidirectional):
  prob = random_problem(7, 16, 8, sizes=(4, 16, 3), num_layers=num_layers,
                        bidirectional=bidirectional, dtype=jnp.float32)
  lengths = jnp.array([16, 9, 12, 3, 16, 1, 7, 0])
  args = (prob.params, prob.batch.xs, prob.h0, lengths)
  default = unroll(*args)
  mixed = unroll(*args, compute=jaxrnn.ComputeSpec(dtype=jnp.bfloat16))
  assert all(a.dtype == jnp.float32 for a in mixed)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(mixed, default))
  assert 0 < diff < 5e-2                                    # bf16 rounding, and only that
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
  with pytest.raises(ValueError, match="compute.scan_unroll"):
    jaxrnn.unroll(params, xs, compute=jaxrnn.ComputeSpec(scan_unroll=0))
  with pytest.raises(ValueError, match="compute.gradient"):
    jaxrnn.unroll(params, xs, compute=jaxrnn.ComputeSpec(gradient="magic"))
  with pytest.raises(TypeError, match="compute.dtype"):
    jaxrnn.unroll(params, xs, compute=jaxrnn.ComputeSpec(dtype=jnp.int32))
  with pytest.raises(ValueError, match="model.activation"):
    jaxrnn.unroll(params, xs, model=jaxrnn.ModelSpec(activation="sigmoid"))
  with pytest.raises(ValueError, match="model.output_activation"):
    jaxrnn.unroll(params, xs, model=jaxrnn.ModelSpec(output_activation="relu"))
  with pytest.raises(TypeError, match="model"):
    jaxrnn.unroll(params, xs, model={"activation": "tanh"})
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
