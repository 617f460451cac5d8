"""jaxrnn.infer equals jaxrnn.unroll; jaxrnn.generate against a step-by-step NumPy sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from conftest import MODELS, random_params, random_problem
from test_unroll import NP_ACT, assert_rel_close, unroll

T, B = 7, 4
LENGTHS = jnp.array([7, 3, 0, 1])
infer = jax.jit(jaxrnn.infer, static_argnames="model")


@pytest.mark.parametrize("num_layers,bidirectional", MODELS + [(2, False)])
@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
def test_infer_equals_unroll(num_layers, bidirectional, dtype, rtol):
  prob = random_problem(6, T, B, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype)
  model = jaxrnn.ModelSpec(activation="relu" if bidirectional else "tanh",
                           output_activation="softmax")
  for lengths in (None, LENGTHS):
    final, ys = infer(prob.params, prob.batch.xs, prob.h0, lengths, model=model)
    _, want_ys, want_final = unroll(prob.params, prob.batch.xs, prob.h0, lengths, model=model)
    assert_rel_close((final, ys), (want_final, want_ys), rtol)
  np.testing.assert_array_equal(final[:, 2], prob.h0[:, 2])        # a length-0 sequence keeps h0
  np.testing.assert_array_equal(ys[:, 2], 0)


def test_infer_defaults_and_bad_arguments():
  prob = random_problem(1, T, B, num_layers=2, bidirectional=True)
  final, ys = jaxrnn.infer(prob.params, prob.batch.xs)
  assert final.shape == (4, B, 5) and ys.shape == (T, B, 2)
  with pytest.raises(ValueError, match="model.output_activation"):
    jaxrnn.infer(prob.params, prob.batch.xs, model=jaxrnn.ModelSpec(output_activation="relu"))
  with pytest.raises(ValueError, match="h0"):
    jaxrnn.infer(prob.params, prob.batch.xs, prob.h0[:1])
  with pytest.raises(ValueError, match="lengths"):
    jaxrnn.infer(prob.params, prob.batch.xs, lengths=LENGTHS + 1)
  with pytest.raises(ValueError, match="xs"):
    jaxrnn.infer(prob.params, prob.batch.xs[..., :1])


def numpy_generate(params, key, prompt, length, temperature, activation):
  """Step by step: one-hot symbols through every layer (NumPy), then
  ``jax.random.categorical(fold_in(key, i), logits / temperature)`` for symbol ``i``."""
  p = jax.tree.map(np.asarray, params)
  vocab = p.W_hy.shape[0]
  h = [np.zeros(cell.W_hh.shape[0]) for (cell,) in p.layers]

  def read(symbol):
    x = np.eye(vocab)[symbol]
    for l, (cell,) in enumerate(p.layers):
      h[l] = NP_ACT[activation](cell.W_xh @ x + cell.W_hh @ h[l] + cell.b_h)
      x = h[l]
    return p.W_hy @ x + p.b_y

  for symbol in np.asarray(prompt):
    logits = read(int(symbol))
  out = []
  for i in range(length):
    symbol = int(jax.random.categorical(jax.random.fold_in(key, i),
                                        jnp.asarray(logits / temperature)))
    out.append(symbol)
    logits = read(symbol)
  return np.array(out, dtype=int)


generate = jax.jit(jaxrnn.generate, static_argnames=("length", "temperature", "model"))


@pytest.mark.parametrize("num_layers,activation,temperature", [(1, "tanh", 1.0), (2, "relu", 0.7)])
def test_generate_equals_step_by_step_sampler(num_layers, activation, temperature):
  params = random_params(num_layers, (6, 8, 6), num_layers=num_layers)
  params = params._replace(W_hy=3 * params.W_hy)                   # a peaked but not flat p
  key, prompt = jax.random.key(4), jnp.array([3, 1, 4, 1])
  model = jaxrnn.ModelSpec(activation=activation, output_activation="softmax")
  got = generate(params, key, prompt, 12, temperature, model=model)
  want = numpy_generate(params, key, prompt, 12, temperature, activation)
  assert got.shape == (12,) and jnp.issubdtype(got.dtype, jnp.integer)
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(generate(params, key, prompt, 12, temperature, model=model), got)
  assert len(set(want.tolist())) > 1
  others = [generate(params, jax.random.key(k), prompt, 12, temperature, model=model)
            for k in (5, 6)]
  assert any(not np.array_equal(o, got) for o in others)


def test_generate_edge_cases_and_bad_arguments():
  params = random_params(0, (4, 3, 4))
  key, prompt = jax.random.key(0), jnp.array([0, 2])
  assert jaxrnn.generate(params, key, prompt, 0).shape == (0,)
  cold = jaxrnn.generate(params, key, prompt, 5, temperature=1e-6)  # greedy at low temperature
  greedy = numpy_generate(params, key, prompt, 5, 1e-6, "tanh")
  np.testing.assert_array_equal(cold, greedy)
  bi = random_params(0, (4, 3, 4), num_layers=2, bidirectional=True)
  with pytest.raises(ValueError, match="unidirectional"):
    jaxrnn.generate(bi, key, prompt, 3)
  with pytest.raises(ValueError, match="input size"):
    jaxrnn.generate(random_params(0, (3, 3, 4)), key, prompt, 3)
  with pytest.raises(ValueError, match="prompt"):
    jaxrnn.generate(params, key, jnp.array([], jnp.int32), 3)
  with pytest.raises(ValueError, match="prompt"):
    jaxrnn.generate(params, key, jnp.array([0, 4]), 3)
  with pytest.raises(ValueError, match="prompt"):
    jaxrnn.generate(params, key, jnp.array([-1]), 3)
  with pytest.raises(ValueError, match="prompt"):
    jaxrnn.generate(params, key, jnp.array([[0, 1]]), 3)
  with pytest.raises(TypeError, match="prompt"):
    jaxrnn.generate(params, key, jnp.array([0.0, 1.0]), 3)
  with pytest.raises(TypeError, match="prompt"):
    jaxrnn.generate(params, key, [0, 1], 3)
  for bad in (0, 0.0, -1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="temperature"):
      jaxrnn.generate(params, key, prompt, 3, temperature=bad)
  for bad in (-1, 2.0, True):
    with pytest.raises(ValueError, match="length"):
      jaxrnn.generate(params, key, prompt, bad)
