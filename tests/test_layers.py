"""jaxrnn.nnx.RNN and jaxrnn.equinox.RNN: outputs and gradients against the functional API, the
NumPy reference, Flax's own nnx.RNN(nnx.SimpleCell) and an Equinox module over lax.scan written
here; conversion to and from RNNParams, dropout randomness, batch-first, argument checks and a
short training loop in each framework. Each framework's tests skip without it."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
import reference
from conftest import random_params, random_problem

T, B = 6, 4
LENGTHS = jnp.array([6, 2, 0, 4])


class NNX:
  """How a test builds, calls and differentiates the Flax NNX layer."""
  randomness = "rngs"

  def __init__(self):
    self.nnx = pytest.importorskip("flax.nnx", reason="needs Flax: pip install -e '.[flax]'")
    import jaxrnn.nnx  # pylint: disable=import-outside-toplevel
    self.RNN = jaxrnn.nnx.RNN

  def build(self, *args, seed=0, **kwargs):
    return self.RNN(*args, rngs=self.nnx.Rngs(seed), **kwargs)

  def from_params(self, params, **kwargs):
    return self.RNN.from_params(params, **kwargs)

  def call(self, layer, xs, lengths=None, h0=None, key=None):
    return layer(xs, lengths, h0, rngs=key)

  def evaluation(self, layer):
    layer.eval()
    return layer

  def grads(self, layer, loss):
    """``d loss(layer) / d weights`` as an RNNParams."""
    grads = self.nnx.jit(self.nnx.grad(loss))(layer)
    holder = self.nnx.clone(layer)
    self.nnx.update(holder, grads)
    return holder.to_params()

  def with_weights_of(self, layer, other):
    self.nnx.update(layer, self.nnx.state(other, self.nnx.Param))
    return layer


class Equinox:
  """How a test builds, calls and differentiates the Equinox layer."""
  randomness = "key"

  def __init__(self):
    self.eqx = pytest.importorskip("equinox", reason="needs Equinox: pip install -e '.[equinox]'")
    import jaxrnn.equinox  # pylint: disable=import-outside-toplevel
    self.RNN = jaxrnn.equinox.RNN

  def build(self, *args, seed=0, **kwargs):
    return self.RNN(*args, key=jax.random.key(seed), **kwargs)

  def from_params(self, params, **kwargs):
    return self.RNN.from_params(params, **kwargs)

  def call(self, layer, xs, lengths=None, h0=None, key=None):
    return layer(xs, lengths, h0, key=key)

  def evaluation(self, layer):
    return self.eqx.nn.inference_mode(layer)

  def grads(self, layer, loss):
    return self.eqx.filter_jit(self.eqx.filter_grad(loss))(layer).params

  def with_weights_of(self, layer, other):
    return self.eqx.tree_at(lambda l: l.params, layer, other.params)


@pytest.fixture(params=[NNX, Equinox], ids=["nnx", "equinox"])
def fw(request):
  return request.param()


def masked_cross_entropy(ys, targets, lengths):
  """``sum_{t < lengths[b]} -log softmax(ys_t)[target_t]``, by optax (not jaxrnn's loss)."""
  live = jnp.arange(ys.shape[0])[:, None] < lengths[None, :]
  return jnp.sum(jnp.where(live, optax.softmax_cross_entropy_with_integer_labels(ys, targets), 0))


def test_import_jaxrnn_imports_neither_framework():
  code = ("import sys, jaxrnn; bad = {'flax', 'equinox'} & {m.split('.')[0] for m in sys.modules}; "
          "assert not bad, bad")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        check=False)
  assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_outputs_are_unrolls(fw, num_layers, bidirectional):
  layer = fw.build(3, 5, 2, num_layers=num_layers, bidirectional=bidirectional,
                   activation="relu", output_activation="sigmoid", dtype=jnp.float64)
  params = layer.to_params()
  prob = random_problem(1, T, B, num_layers=num_layers, bidirectional=bidirectional)
  ys, final = fw.call(layer, prob.batch.xs, LENGTHS, prob.h0)
  want = jaxrnn.unroll(params, prob.batch.xs, prob.h0, LENGTHS, model=layer.model)
  assert layer.model == jaxrnn.ModelSpec("relu", "sigmoid")
  chex.assert_trees_all_equal((ys, final), (want.ys, want.final))


def test_outputs_match_the_numpy_reference(fw):
  prob = random_problem(2, T, B, num_layers=2, bidirectional=True)
  ys, final = fw.call(fw.from_params(prob.params), prob.batch.xs, LENGTHS, prob.h0)
  params = reference.as_numpy(prob.params)
  top, _, want_final, _ = reference.forward(params, prob.batch.xs, prob.h0, np.asarray(LENGTHS))
  want_ys = reference.readout(params, top, lengths=np.asarray(LENGTHS))
  chex.assert_trees_all_close((ys, final), (want_ys, want_final), rtol=1e-12, atol=1e-13)
  assert np.max(np.abs(want_ys)) > 0.1


def test_without_a_readout_the_layer_returns_the_top_layer(fw):
  layer = fw.build(3, 5, None, num_layers=2, bidirectional=True, dtype=jnp.float64)
  params = layer.to_params()
  assert params.W_hy.shape == (0, 10) and params.b_y.shape == (0,)
  xs = random_problem(3, T, B).batch.xs
  hs, final = fw.call(layer, xs, LENGTHS)
  want = jaxrnn.unroll(params, xs, lengths=LENGTHS)
  chex.assert_trees_all_equal((hs, final), (want.hs, want.final))
  assert hs.shape == (T, B, 10)


@pytest.mark.parametrize("output_size", [2, None])
def test_params_round_trip(fw, output_size):
  built = fw.build(3, 5, output_size, num_layers=2, bidirectional=True, activation="relu")
  params = built.to_params()
  again = fw.from_params(params, activation="relu")
  chex.assert_trees_all_equal(again.to_params(), params, strict=True)
  assert jax.tree.structure(again.to_params()) == jax.tree.structure(params)
  assert (again.shape, again.model, again.compute) == (built.shape, built.model, built.compute)
  xs = jnp.ones((T, B, 3), params.W_hy.dtype)
  chex.assert_trees_all_equal(fw.call(again, xs), fw.call(built, xs))
  other = random_params(4, num_layers=2, bidirectional=True)
  chex.assert_trees_all_equal(fw.from_params(other).to_params(), other, strict=True)


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_gradients_are_the_functional_apis(fw, num_layers, bidirectional):
  """One layer against jaxrnn.loss_and_grad (no h0), two against jax.grad(sequence_loss)."""
  prob = random_problem(5, T, B, num_layers=num_layers, bidirectional=bidirectional)
  batch = prob.batch._replace(lengths=LENGTHS)
  h0 = None if num_layers == 1 else prob.h0
  loss = lambda l: masked_cross_entropy(fw.call(l, batch.xs, LENGTHS, h0)[0], batch.targets,
                                        LENGTHS)
  got = fw.grads(fw.from_params(prob.params), loss)
  if h0 is None:
    value, want = jax.jit(jaxrnn.loss_and_grad)(prob.params, batch)
  else:
    (value, _), want = jax.jit(jax.value_and_grad(jaxrnn.sequence_loss, has_aux=True))(
        prob.params, batch, h0)
  chex.assert_trees_all_close(got, want, rtol=1e-11, atol=1e-13)
  assert float(loss(fw.from_params(prob.params))) == pytest.approx(float(value), rel=1e-12)


def test_gradients_match_the_numpy_bptt(fw):
  prob = random_problem(6, T, B, num_layers=2, bidirectional=True)
  loss = lambda l: masked_cross_entropy(fw.call(l, prob.batch.xs, LENGTHS, prob.h0)[0],
                                        prob.batch.targets, LENGTHS)
  want, _ = reference.bptt(prob.params, prob.batch.xs, prob.batch.targets, prob.h0,
                           np.asarray(LENGTHS))
  got = fw.grads(fw.from_params(prob.params), loss)
  chex.assert_trees_all_close(reference.as_numpy(got), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gradient, fused", [("fused", True), ("autodiff", False)])
def test_the_gradient_runs_the_compute_spec(fw, gradient, fused):
  params = random_params(7)
  compute = jaxrnn.ComputeSpec(gradient=gradient)
  layer = fw.from_params(params, compute=compute)
  xs = jnp.ones((T, B, 3))
  jaxpr = str(jax.make_jaxpr(lambda x: fw.call(layer, x)[0])(xs))
  assert ("custom_vjp_call" in jaxpr) == fused


DROPOUT = {"dropout": 0.5, "input_dropout": 0.3, "state_dropout": 0.4}


def test_dropout_draws_from_the_key(fw):
  layer = fw.build(3, 5, 2, num_layers=2, dtype=jnp.float64, **DROPOUT)
  params, xs = layer.to_params(), random_problem(8, T, B).batch.xs
  key, other = jax.random.key(1), jax.random.key(2)
  out = fw.call(layer, xs, LENGTHS, key=key)
  want = jaxrnn.unroll(params, xs, lengths=LENGTHS, model=layer.model, key=key)
  chex.assert_trees_all_equal(out, fw.call(layer, xs, LENGTHS, key=key), (want.ys, want.final))
  assert not np.allclose(out[0], fw.call(layer, xs, LENGTHS, key=other)[0])
  plain = jaxrnn.unroll(params, xs, lengths=LENGTHS)
  assert not np.allclose(out[0], plain.ys)
  evaluated = fw.evaluation(layer)
  chex.assert_trees_all_equal(fw.call(evaluated, xs, LENGTHS, key=key), (plain.ys, plain.final))


def test_dropout_without_randomness_is_refused(fw):
  layer = fw.from_params(random_params(9), input_dropout=0.5)
  xs = jnp.ones((T, B, 3))
  with pytest.raises(ValueError, match=fw.randomness):
    fw.call(layer, xs)
  with pytest.raises(TypeError, match=f"^{fw.randomness} must be a jax.random key .*got int"):
    fw.call(layer, xs, key=3)
  chex.assert_trees_all_equal(fw.call(fw.evaluation(layer), xs),
                              tuple(jaxrnn.unroll(layer.to_params(), xs))[1:])
  no_dropout = fw.from_params(random_params(9))
  chex.assert_trees_all_equal(fw.call(no_dropout, xs), fw.call(fw.evaluation(layer), xs))


def test_batch_first(fw):
  prob = random_problem(10, T, B, num_layers=2, bidirectional=True)
  time_major = fw.from_params(prob.params)
  batch_first = fw.from_params(prob.params, batch_first=True)
  ys, final = fw.call(time_major, prob.batch.xs, LENGTHS, prob.h0)
  ys_b, final_b = fw.call(batch_first, jnp.swapaxes(prob.batch.xs, 0, 1), LENGTHS, prob.h0)
  chex.assert_trees_all_equal((jnp.swapaxes(ys_b, 0, 1), final_b), (ys, final))
  with pytest.raises(ValueError, match="xs"):
    fw.call(batch_first, prob.batch.xs[:, :, :2])


BAD_OPTIONS = [
    ({"input_size": 0}, ValueError, "input_size"),
    ({"hidden_size": -1}, ValueError, "hidden_size"),
    ({"output_size": 0}, ValueError, "output_size"),
    ({"num_layers": 0}, ValueError, "num_layers"),
    ({"bidirectional": 1}, TypeError, "bidirectional"),
    ({"activation": "sigmoid"}, ValueError, "unknown activation"),
    ({"output_activation": "relu"}, ValueError, "unknown output_activation"),
    ({"dropout": 1.0}, ValueError, "^dropout"),
    ({"state_dropout": -0.1}, ValueError, "^state_dropout"),
    ({"init": "xavier"}, ValueError, "init.scheme"),
    ({"dtype": jnp.int32}, TypeError, "dtype"),
    ({"batch_first": 1}, TypeError, "batch_first"),
    ({"compute": "fused"}, TypeError, "compute"),
    ({"bidirectional": True, "compute": jaxrnn.ComputeSpec(checkpoint_every=2)}, ValueError,
     "checkpoint_every"),
]


@pytest.mark.parametrize("bad, error, name", BAD_OPTIONS)
def test_bad_options_name_the_argument(fw, bad, error, name):
  args = {"input_size": 3, "hidden_size": 5, "output_size": 2, **bad}
  with pytest.raises(error, match=name):
    fw.build(args.pop("input_size"), args.pop("hidden_size"), args.pop("output_size"), **args)


def test_bad_calls_name_the_argument(fw):
  layer = fw.from_params(random_params(11, num_layers=2, bidirectional=True))
  xs = jnp.ones((T, B, 3))
  for args, error, name in [((xs[..., :2],), ValueError, "xs"),
                            ((xs.astype(jnp.float32),), TypeError, "xs"),
                            ((xs, None, jnp.zeros((2, B, 5))), ValueError, "h0"),
                            ((xs, jnp.ones(B)), TypeError, "lengths"),
                            ((xs, jnp.full(B, T + 1)), ValueError, "lengths")]:
    with pytest.raises(error, match=name):
      fw.call(layer, *args)
  flag = "deterministic" if fw.randomness == "rngs" else "inference"
  with pytest.raises(TypeError, match=f"{flag} must be a bool or None, got 'no'"):
    layer(xs, **{flag: "no"})                   # a truthy string would turn dropout off


def test_another_layers_weights_are_refused(fw):
  layer = fw.build(3, 5, 2, dtype=jnp.float64)
  other = fw.build(3, 7, 2, dtype=jnp.float64)
  mixed = fw.with_weights_of(layer, other)
  with pytest.raises(ValueError, match="another layer's state"):
    fw.call(mixed, jnp.ones((T, B, 3)))


# ---- Flax NNX: parity with nnx.RNN(nnx.SimpleCell), training with nnx.Optimizer ----------------


FLAX_LENGTHS = jnp.array([6, 2, 1, 4])


def flax_stack(nnx, params, time_major=True):
  """Flax's own layers (``nnx.RNN`` of ``nnx.SimpleCell``, ``nnx.Bidirectional``) holding
  ``params``' cells: ``dense_i.kernel = W_xh^T``, ``dense_i.bias = b_h``, ``dense_h.kernel =
  W_hh^T``."""
  dtype = params.W_hy.dtype

  def rnn(cell, reverse):
    hidden, width = cell.W_xh.shape
    simple = nnx.SimpleCell(width, hidden, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    simple.dense_i.kernel[...] = cell.W_xh.T
    simple.dense_i.bias[...] = cell.b_h
    simple.dense_h.kernel[...] = cell.W_hh.T
    return nnx.RNN(simple, time_major=time_major, reverse=reverse, keep_order=reverse)

  return [nnx.Bidirectional(rnn(layer[0], False), rnn(layer[1], True), time_major=time_major)
          if len(layer) == 2 else rnn(layer[0], False) for layer in params.layers]


def run_flax(stack, xs, h0, lengths):
  """``(top [T, B, D*H], final [L*D, B, H])`` of a :func:`flax_stack`."""
  finals, num_dirs = [], h0.shape[0] // len(stack)
  for l, rnn in enumerate(stack):
    carry = tuple(h0[l * num_dirs:(l + 1) * num_dirs]) if num_dirs == 2 else h0[l]
    carry, xs = rnn(xs, initial_carry=carry, seq_lengths=lengths, return_carry=True)
    finals += list(carry) if num_dirs == 2 else [carry]
  return xs, jnp.stack(finals)


@pytest.mark.parametrize("num_layers, bidirectional, dtype, rtol, lengths", [
    (1, False, jnp.float32, 1e-6, None), (1, False, jnp.float64, 1e-12, FLAX_LENGTHS),
    (2, True, jnp.float32, 1e-6, FLAX_LENGTHS), (2, True, jnp.float64, 1e-12, None)])
def test_nnx_matches_flax_simple_cell(num_layers, bidirectional, dtype, rtol, lengths):
  """Outputs on live steps, final states and gradients (weights, xs, h0); one and two layers,
  both directions, with and without lengths (no length 0: Flax's final carry is then the last
  step's, not h0), float32 and float64."""
  nnx = NNX().nnx
  import jaxrnn.nnx  # pylint: disable=import-outside-toplevel
  prob = random_problem(12, T, B, num_layers=num_layers, bidirectional=bidirectional,
                        dtype=dtype)
  params = prob.params._replace(W_hy=prob.params.W_hy[:0], b_y=prob.params.b_y[:0])
  layer = jaxrnn.nnx.RNN.from_params(params)
  stack = flax_stack(nnx, params)
  full = jnp.full(B, T) if lengths is None else lengths
  live = (jnp.arange(T)[:, None] < full[None, :])[..., None]             # [T, B, 1]
  rng = np.random.default_rng(13)
  w_hs = jnp.asarray(rng.standard_normal((T, B, params.layers[0][0].W_hh.shape[0] *
                                          len(params.layers[0]))), dtype)
  w_final = jnp.asarray(rng.standard_normal(prob.h0.shape), dtype)

  def loss(hs, final):
    return jnp.sum(jnp.where(live, w_hs * hs, 0)) + jnp.sum(w_final * final)

  def ours(layer, xs, h0):
    return loss(*layer(xs, lengths, h0))

  def theirs(stack, xs, h0):
    return loss(*run_flax(stack, xs, h0, None if lengths is None else lengths))

  @nnx.jit                                        # one program: eager Flax compiles op by op
  def both(layer, stack, xs, h0):
    return ((layer(xs, lengths, h0), run_flax(stack, xs, h0, lengths)),
            nnx.grad(ours, argnums=(0, 1, 2))(layer, xs, h0),
            nnx.grad(theirs, argnums=(0, 1, 2))(stack, xs, h0))

  ((hs, final), (top, want_final)), (g_ours, gx_ours, gh_ours), (
      g_theirs, gx_theirs, gh_theirs) = both(layer, stack, prob.batch.xs, prob.h0)
  atol = rtol * 10
  chex.assert_trees_all_close((jnp.where(live, hs, 0), final),
                              (jnp.where(live, top, 0), want_final), rtol=rtol, atol=atol)
  holder = nnx.clone(layer)
  nnx.update(holder, g_ours)
  cells = holder.to_params().layers
  for l, layer_cells in enumerate(cells):
    for d, cell in enumerate(layer_cells):
      rnn = g_theirs[l] if len(layer_cells) == 1 else (
          g_theirs[l]["forward_rnn" if d == 0 else "backward_rnn"])
      want = (rnn["cell"]["dense_i"]["kernel"][...].T, rnn["cell"]["dense_h"]["kernel"][...].T,
              rnn["cell"]["dense_i"]["bias"][...])
      chex.assert_trees_all_close(tuple(cell), want, rtol=rtol, atol=atol)
  chex.assert_trees_all_close((gx_ours, gh_ours), (gx_theirs, gh_theirs), rtol=rtol, atol=atol)


def tiny_language_problem(seed, vocab=5, num_steps=8, batch=4):
  """Class sequences ``[T, B]`` whose next class is ``(c + 1) mod vocab``: learnable fast."""
  start = jax.random.randint(jax.random.key(seed), (batch,), 0, vocab)
  seqs = (start[None, :] + jnp.arange(num_steps + 1)[:, None]) % vocab
  return seqs[:-1], seqs[1:]


def test_nnx_training_with_nnx_optimizer_lowers_the_loss():
  nnx = NNX().nnx
  import jaxrnn.nnx  # pylint: disable=import-outside-toplevel

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(5, 4, param_dtype=jnp.float64, rngs=rngs)
      self.rnn = jaxrnn.nnx.RNN(4, 8, None, dropout=0.1, num_layers=2, dtype=jnp.float64,
                                rngs=rngs)
      self.head = nnx.Linear(8, 5, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, tokens):
      return self.head(self.rnn(self.embed(tokens))[0])

  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
  inputs, targets = tiny_language_problem(0)

  @nnx.jit
  @chex.assert_max_traces(n=1)
  def train_step(model, optimizer, inputs, targets):
    def loss_fn(model):
      logits = model(inputs)
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer, inputs, targets)) for _ in range(30)]
  assert losses[-1] < 0.5 * losses[0]
  assert int(model.rnn.rngs.count[...]) == 30                   # one dropout key per step


def test_nnx_state_paths_are_rnnparams_fields():
  nnx = NNX().nnx
  import jaxrnn.nnx  # pylint: disable=import-outside-toplevel
  layer = jaxrnn.nnx.RNN(3, 5, 2, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
  paths = {path for path, _ in nnx.to_flat_state(nnx.state(layer, nnx.Param))}
  assert ("params", "layers", 1, 1, "W_hh") in paths and ("params", "W_hy") in paths
  assert len(paths) == 2 * 2 * 3 + 2
  assert nnx.state(layer, nnx.RngState) == nnx.State({})         # no dropout: no stream


# ---- Equinox: parity with a module over lax.scan, training with filter_value_and_grad ---------


def test_equinox_matches_a_scan_module():
  eqx = Equinox().eqx
  import jaxrnn.equinox  # pylint: disable=import-outside-toplevel

  class ScanRNN(eqx.Module):
    """A one-layer Elman RNN with a read-out, written over lax.scan (the usual Equinox way)."""
    W_xh: jax.Array
    W_hh: jax.Array
    b_h: jax.Array
    W_hy: jax.Array
    b_y: jax.Array

    def __call__(self, xs, h0):
      def step(h, x):
        h = jnp.tanh(x @ self.W_xh.T + h @ self.W_hh.T + self.b_h)
        return h, h
      final, hs = jax.lax.scan(step, h0, xs)
      return hs @ self.W_hy.T + self.b_y, final

  prob = random_problem(14, T, B)
  (cell,), = prob.params.layers
  scan = ScanRNN(cell.W_xh, cell.W_hh, cell.b_h, prob.params.W_hy, prob.params.b_y)
  layer = jaxrnn.equinox.RNN.from_params(prob.params)
  ys, final = layer(prob.batch.xs, h0=prob.h0)
  want_ys, want_final = scan(prob.batch.xs, prob.h0[0])
  chex.assert_trees_all_close((ys, final[0]), (want_ys, want_final), rtol=1e-12, atol=1e-13)
  loss = lambda ys: jnp.sum(jnp.sin(ys))
  got = eqx.filter_grad(lambda m: loss(m(prob.batch.xs, h0=prob.h0)[0]))(layer).params
  want = eqx.filter_grad(lambda m: loss(m(prob.batch.xs, prob.h0[0])[0]))(scan)
  chex.assert_trees_all_close((tuple(got.layers[0][0]), got.W_hy, got.b_y),
                              ((want.W_xh, want.W_hh, want.b_h), want.W_hy, want.b_y),
                              rtol=1e-12, atol=1e-13)


def test_equinox_training_with_filter_value_and_grad_lowers_the_loss():
  eqx = Equinox().eqx
  import jaxrnn.equinox  # pylint: disable=import-outside-toplevel

  class Model(eqx.Module):
    embed: eqx.nn.Embedding
    rnn: jaxrnn.equinox.RNN
    head: eqx.nn.Linear

    def __init__(self, key):
      k_embed, k_rnn, k_head = jax.random.split(key, 3)
      self.embed = eqx.nn.Embedding(5, 4, dtype=jnp.float64, key=k_embed)
      self.rnn = jaxrnn.equinox.RNN(4, 8, None, dropout=0.1, num_layers=2, dtype=jnp.float64,
                                    key=k_rnn)
      self.head = eqx.nn.Linear(8, 5, dtype=jnp.float64, key=k_head)

    def __call__(self, tokens, key=None):
      hs, _ = self.rnn(self.embed.weight[tokens], key=key)
      return hs @ self.head.weight.T + self.head.bias

  model = Model(jax.random.key(0))
  optimizer = optax.adam(0.05)
  opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
  inputs, targets = tiny_language_problem(0)

  @eqx.filter_jit
  @chex.assert_max_traces(n=1)
  def train_step(model, opt_state, inputs, targets, key):
    def loss_fn(model):
      logits = model(inputs, key=key)
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, loss

  losses = []
  for step in range(30):
    model, opt_state, loss = train_step(model, opt_state, inputs, targets,
                                        jax.random.fold_in(jax.random.key(1), step))
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0]
