"""jaxrnn.infer against the NumPy reference (tests/reference.py), NaN for a bad length under jit;
jaxrnn.generate against the reference's logits (reference.sample_logits), all -1 for a bad prompt
under jit; argument checks."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxrnn
import reference
from conftest import MODELS, random_params, random_problem

T, B = 7, 4
LENGTHS = np.array([7, 3, 0, 1])


def reference_infer(params, xs, h0, lengths, activation, output_activation):
  """``(final, ys)`` of the NumPy reference."""
  p = reference.as_numpy(params)
  top, _, final, _ = reference.forward(p, xs, h0, lengths, activation)
  return final, reference.readout(p, top, output_activation, lengths)


INFER_CASES = [(num_layers, bidirectional, dtype) for num_layers, bidirectional in
               MODELS + [(2, False)] for dtype in ("float64", "float32")]


class TestInferVariants(chex.TestCase):
  """jaxrnn.infer jitted and not (chex variants)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*INFER_CASES)
  def test_infer_matches_the_reference(self, num_layers, bidirectional, dtype):
    prob = random_problem(6, T, B, num_layers=num_layers, bidirectional=bidirectional,
                          dtype=jnp.dtype(dtype))
    activation = "relu" if bidirectional else "tanh"
    model = jaxrnn.ModelSpec(activation=activation, output_activation="softmax")
    compute = jaxrnn.ComputeSpec(scan_unroll=1 + num_layers)
    run = self.variant(functools.partial(jaxrnn.infer, model=model, compute=compute))
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)
    for lengths in (None, LENGTHS):
      got = run(prob.params, prob.batch.xs, prob.h0,
                None if lengths is None else jnp.asarray(lengths))
      chex.assert_trees_all_equal_shapes(got, (prob.h0, jnp.zeros((T, B, 2))))
      chex.assert_type(got, jnp.dtype(dtype))
      want = reference_infer(prob.params, prob.batch.xs, prob.h0, lengths, activation, "softmax")
      chex.assert_trees_all_close(got, want, **tol)
    final, ys = got
    chex.assert_trees_all_equal(final[:, 2], prob.h0[:, 2])  # a length-0 sequence keeps h0
    chex.assert_trees_all_equal(ys[:, 2], jnp.zeros_like(ys[:, 2]))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODELS)
  def test_a_length_outside_0_T_raises_eagerly_and_gives_nan_under_jit(self, num_layers,
                                                                        bidirectional):
    prob = random_problem(7, T, B, num_layers=num_layers, bidirectional=bidirectional)
    run = self.variant(jaxrnn.infer)
    good = run(prob.params, prob.batch.xs, prob.h0, jnp.asarray(LENGTHS))
    for bad in (T + 1, -1):
      lengths = jnp.asarray(LENGTHS).at[1].set(bad)
      if self.variant.type == chex.ChexVariantType.WITHOUT_JIT:
        with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=7\]"):
          run(prob.params, prob.batch.xs, prob.h0, lengths)
        continue
      final, ys = run(prob.params, prob.batch.xs, prob.h0, lengths)
      assert np.all(np.isnan(final[:, 1])) and np.all(np.isnan(ys[:, 1])), bad
      rest = np.array([0, 2, 3])                               # the other sequences: unchanged
      chex.assert_trees_all_close((final[:, rest], ys[:, rest]),
                                  (good[0][:, rest], good[1][:, rest]), rtol=1e-12, atol=1e-14)


def test_infer_defaults_and_bad_arguments():
  prob = random_problem(1, T, B, num_layers=2, bidirectional=True)
  final, ys = jaxrnn.infer(prob.params, prob.batch.xs)
  chex.assert_shape(final, (4, B, 5))
  chex.assert_shape(ys, (T, B, 2))
  chex.assert_trees_all_close((final, ys), reference_infer(prob.params, prob.batch.xs, None, None,
                                                           "tanh", "identity"),
                              rtol=1e-12, atol=1e-13)
  with pytest.raises(ValueError, match="model.output_activation"):
    jaxrnn.ModelSpec(output_activation="relu")
  with pytest.raises(TypeError, match="model must be a jaxrnn.ModelSpec"):
    jaxrnn.infer(prob.params, prob.batch.xs, model=jaxrnn.LossSpec())
  with pytest.raises(TypeError, match="compute must be a jaxrnn.ComputeSpec"):
    jaxrnn.infer(prob.params, prob.batch.xs, compute=jaxrnn.ModelSpec())
  with pytest.raises(ValueError, match="h0"):
    jaxrnn.infer(prob.params, prob.batch.xs, prob.h0[:1])
  with pytest.raises(ValueError, match="h0 contains NaN"):
    jaxrnn.infer(prob.params, prob.batch.xs, prob.h0.at[0, 0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="lengths"):
    jaxrnn.infer(prob.params, prob.batch.xs, lengths=jnp.asarray(LENGTHS) + 1)
  with pytest.raises(ValueError, match="xs"):
    jaxrnn.infer(prob.params, prob.batch.xs[..., :1])


def lm_params(num_layers, seed=None):
  """A next-symbol model over 6 symbols (I = O = 6), peaked but not flat."""
  params = random_params(num_layers if seed is None else seed, (6, 8, 6), num_layers=num_layers)
  return params._replace(W_hy=3 * params.W_hy)


def reference_samples(params, key, prompt, symbols, temperature, activation):
  """What each of ``symbols`` must be given the ones before it: symbol ``k`` is
  ``jax.random.categorical(fold_in(key, k), z / temperature)`` with ``z`` the reference's logits
  after reading ``prompt`` and ``symbols[:k]``."""
  z = reference.sample_logits(reference.as_numpy(params), prompt, symbols, activation)
  rows = z[len(prompt) - 1:len(prompt) - 1 + len(symbols)]                  # [S, O]
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(symbols)))
  return np.asarray(jax.vmap(jax.random.categorical)(keys, jnp.asarray(rows / temperature))), z


class TestGenerateVariants(chex.TestCase):
  """jaxrnn.generate jitted (params, key, prompt traced; length static) and not."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1, "tanh", 1.0), (2, "relu", 0.7))
  def test_generate_samples_from_the_reference_logits(self, num_layers, activation, temperature):
    params = lm_params(num_layers)
    key, prompt = jax.random.key(4), jnp.array([3, 1, 4, 1])
    model = jaxrnn.ModelSpec(activation=activation, output_activation="softmax")
    run = self.variant(functools.partial(jaxrnn.generate, length=12, temperature=temperature,
                                         model=model, compute=jaxrnn.ComputeSpec(scan_unroll=2)))
    got = run(params, key, prompt)
    chex.assert_shape(got, (12,))
    assert jnp.issubdtype(got.dtype, jnp.integer)
    want, _ = reference_samples(params, key, prompt, got, temperature, activation)
    chex.assert_trees_all_equal(np.asarray(got), want)
    chex.assert_trees_all_equal(run(params, key, prompt), got)          # equal keys, equal text
    assert len(set(np.asarray(got).tolist())) > 1
    others = [run(params, jax.random.key(k), prompt) for k in (5, 6)]
    assert any(not np.array_equal(o, got) for o in others)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 2)
  def test_a_cold_temperature_gives_the_argmax_of_the_reference_logits(self, num_layers):
    params = lm_params(num_layers, seed=10 + num_layers)
    key, prompt = jax.random.key(0), jnp.array([0, 2, 5])
    run = self.variant(functools.partial(jaxrnn.generate, length=8, temperature=1e-6))
    got = np.asarray(run(params, key, prompt))
    z = reference.sample_logits(reference.as_numpy(params), prompt, got)
    greedy = np.argmax(z[len(prompt) - 1:-1], axis=-1)
    chex.assert_trees_all_equal(got, greedy)
    assert len(set(got.tolist())) > 1                            # not one repeated symbol

  @chex.variants(with_jit=True, without_jit=True)
  def test_a_prompt_symbol_outside_0_O_raises_eagerly_and_gives_all_minus_1_under_jit(self):
    params, key = lm_params(1), jax.random.key(0)
    run = self.variant(functools.partial(jaxrnn.generate, length=5))
    assert np.all(np.asarray(run(params, key, jnp.array([0, 5]))) >= 0)   # O = 6: 5 is fine
    for bad in (6, 9, -1, 10 ** 6):
      prompt = jnp.array([0, bad, 2])
      if self.variant.type == chex.ChexVariantType.WITHOUT_JIT:
        with pytest.raises(ValueError, match=r"prompt symbols must lie in \[0, 6\)"):
          run(params, key, prompt)
        continue
      got = np.asarray(run(params, key, prompt))
      chex.assert_trees_all_equal(got, np.full((5,), -1, got.dtype))


def test_generate_edge_cases_and_bad_arguments():
  params = random_params(0, (4, 3, 4))
  key, prompt = jax.random.key(0), jnp.array([0, 2])
  chex.assert_shape(jaxrnn.generate(params, key, prompt, 0), (0,))
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
  with pytest.raises(TypeError, match="key must be a jax.random key"):
    jaxrnn.generate(params, 0, prompt, 3)
  with pytest.raises(TypeError, match="compute must be a jaxrnn.ComputeSpec"):
    jaxrnn.generate(params, key, prompt, 3, compute=jaxrnn.ModelSpec())
  for bad in (0, 0.0, -1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="temperature"):
      jaxrnn.generate(params, key, prompt, 3, temperature=bad)
  for bad in (-1, 2.0, True):
    with pytest.raises(ValueError, match="length"):
      jaxrnn.generate(params, key, prompt, bad)
  memory = jaxrnn.checks.device_memory()           # 4 bytes a symbol: the limit, either side
  with pytest.raises(ValueError, match=rf"length={memory // 4 + 1} needs .* GiB for the sampled"):
    jaxrnn.generate(params, key, prompt, memory // 4 + 1)
  with pytest.raises(ValueError, match=r"length=1000000000000 needs 3725.3 GiB"):
    jaxrnn.generate(params, key, prompt, 10**12)
  assert jax.eval_shape(lambda: jaxrnn.generate(params, key, prompt, memory // 4)).shape == (
      memory // 4,)
