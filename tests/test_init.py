"""jaxrnn.init_params: shapes, dtypes, determinism, independent draws and the four schemes of
jaxrnn.InitSpec, for every model; its argument checks."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxrnn
from conftest import MODELS

I, H, O = 4, 6, 3
init_params = jax.jit(jaxrnn.init_params, static_argnums=(1, 2, 3),
                      static_argnames=("num_layers", "bidirectional", "init", "dtype"))


def cells(params):
  return [cell for layer in params.layers for cell in layer]


def expected_zeros(num_layers, num_dirs, dtype, sizes=(I, H, O)):
  """An :class:`jaxrnn.RNNParams` of zeros with the structure, shapes and dtype init_params owes."""
  in_size, hidden, out_size = sizes
  zeros = lambda *shape: np.zeros(shape, dtype)
  layers = tuple(tuple(jaxrnn.CellParams(zeros(hidden, in_size if l == 0 else num_dirs * hidden),
                                         zeros(hidden, hidden), zeros(hidden))
                       for _ in range(num_dirs)) for l in range(num_layers))
  return jaxrnn.RNNParams(layers, zeros(out_size, num_dirs * hidden), zeros(out_size))


class TestInitVariants(chex.TestCase):
  """jaxrnn.init_params jitted (key traced) and not (chex variants)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(model=MODELS, scheme=jaxrnn.spec.SCHEMES)
  def test_shapes_dtypes_determinism(self, model, scheme):
    num_layers, bidirectional = model
    D = 2 if bidirectional else 1
    run = self.variant(functools.partial(jaxrnn.init_params, input_size=I, hidden_size=H,
                                         output_size=O, num_layers=num_layers,
                                         bidirectional=bidirectional, init=scheme,
                                         dtype=jnp.float32))
    a, b, c = run(jax.random.key(3)), run(jax.random.key(3)), run(jax.random.key(4))
    assert isinstance(a, jaxrnn.RNNParams)
    assert all(isinstance(cell, jaxrnn.CellParams) for cell in cells(a))
    zeros = expected_zeros(num_layers, D, np.float32)
    chex.assert_trees_all_equal_structs(a, zeros)
    chex.assert_trees_all_equal_shapes_and_dtypes(a, zeros)
    chex.assert_trees_all_equal([cell.b_h for cell in cells(a)] + [a.b_y],   # biases start at 0
                                [cell.b_h for cell in cells(zeros)] + [zeros.b_y])
    chex.assert_trees_all_equal(a, b)                                      # equal keys
    assert not np.array_equal(a.W_hy, c.W_hy)                              # another key
    assert not np.array_equal(a.layers[0][0].W_xh, c.layers[0][0].W_xh)
    # Every (layer, direction) gets its own weights.
    w_xh = [np.asarray(cell.W_xh) for cell in cells(a)]
    assert all(not np.array_equal(w_xh[i], w_xh[j]) for i in range(len(w_xh))
               for j in range(i) if w_xh[i].shape == w_xh[j].shape)
    if scheme in ("normal", "glorot"):
      w_hh = [np.asarray(cell.W_hh) for cell in cells(a)]
      assert all(not np.array_equal(w_hh[i], w_hh[j]) for i in range(len(w_hh)) for j in range(i))


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_every_weight_matrix_is_an_independent_draw(num_layers, bidirectional):
  """Under ``"normal"`` every weight is ``scale * z`` with ``z ~ N(0, 1)`` independent of every
  other weight: the normalised draws of W_xh, W_hh (every layer and direction) and W_hy are
  pairwise uncorrelated. (A W_hh drawn with W_xh's key repeats W_xh's draws: correlation 1, and
  with I = H the two matrices would be equal.)"""
  size, scale = 64, 0.05
  params = init_params(jax.random.key(0), size, size, size, num_layers=num_layers,
                       bidirectional=bidirectional, init=jaxrnn.InitSpec("normal", scale))
  named = {f"layers[{l}][{d}].{k}": getattr(cell, k) for l, layer in enumerate(params.layers)
           for d, cell in enumerate(layer) for k in ("W_xh", "W_hh")}
  named["W_hy"] = params.W_hy
  n = size * size                                       # the smallest matrix: W_hh [H, H]
  draws = np.stack([np.ravel(np.asarray(w))[:n] / scale for w in named.values()])   # [M, n]
  assert np.all(np.abs(draws.std(axis=1) - 1) < 0.05)   # N(0, 1) after normalising
  corr = np.corrcoef(draws)
  names = list(named)
  # Independent: |corr| ~ 1/sqrt(n) = 0.016; 0.1 is more than 6 standard deviations.
  assert np.max(np.abs(corr - np.eye(len(names)))) < 0.1, [
      (names[i], names[j], corr[i, j]) for i, j in zip(*np.nonzero(np.abs(np.triu(corr, 1)) > 0.1))]


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_orthogonal_and_identity_recurrent_weights(num_layers, bidirectional):
  kw = dict(num_layers=num_layers, bidirectional=bidirectional)
  gain = 0.5
  orth = init_params(jax.random.key(0), 3, 8, 2, init=jaxrnn.InitSpec("orthogonal", gain), **kw)
  ident = init_params(jax.random.key(0), 3, 8, 2, init=jaxrnn.InitSpec("identity", gain), **kw)
  for cell in cells(orth):
    W = np.asarray(cell.W_hh)
    chex.assert_trees_all_close(W @ W.T, gain ** 2 * np.eye(8), atol=1e-12)
  for cell in cells(ident):
    chex.assert_trees_all_equal(cell.W_hh, gain * jnp.eye(8))
    assert 0 < float(jnp.std(cell.W_xh)) < 0.005                # IRNN: N(0, 0.001^2)
  # A scheme's name is its InitSpec with the default scale: W_hh = I.
  for cell in cells(init_params(jax.random.key(0), 3, 8, 2, init="identity", **kw)):
    chex.assert_trees_all_equal(cell.W_hh, jnp.eye(8))


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_glorot_limit_and_normal_scale(num_layers, bidirectional):
  kw = dict(num_layers=num_layers, bidirectional=bidirectional)
  params = init_params(jax.random.key(0), 30, 50, 20, init="glorot", **kw)
  for w in [cell.W_xh for cell in cells(params)] + [params.W_hy]:
    limit = np.sqrt(6 / sum(w.shape))
    assert limit * 0.9 < float(jnp.max(jnp.abs(w))) <= limit
  params = init_params(jax.random.key(0), 100, 100, 100, **kw)       # default: InitSpec()
  for w in jax.tree.leaves(params):
    if w.ndim == 2:
      assert abs(float(jnp.std(w)) / 0.01 - 1) < 0.05              # the seed's randn * 0.01


def test_default_dtype_follows_x64():
  for num_layers, bidirectional in MODELS:
    kw = dict(num_layers=num_layers, bidirectional=bidirectional)
    with jax.enable_x64(False):
      params = jaxrnn.init_params(jax.random.key(0), 2, 3, 1, **kw)
      chex.assert_type(jax.tree.leaves(params), jnp.float32)
    params = jaxrnn.init_params(jax.random.key(0), 2, 3, 1, **kw)
    chex.assert_type(jax.tree.leaves(params), jnp.float64)


@pytest.mark.parametrize("kwargs,match", [
    (dict(scheme="glorot", scale=0.5), r"init\.scale.*glorot"),
    (dict(scheme="he"), r"init\.scheme 'he'"),
    (dict(scale=0.0), r"init\.scale"),
    (dict(scale=-0.1), r"init\.scale"),
    (dict(scheme="orthogonal", scale=float("nan")), r"init\.scale"),
    (dict(scheme="identity", scale=float("inf")), r"init\.scale"),
    (dict(scale=True), r"init\.scale"),
    (dict(scale="0.1"), r"init\.scale")])
def test_init_spec_fails_when_built(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxrnn.InitSpec(**kwargs)


def test_bad_arguments_name_the_argument():
  key = jax.random.key(0)
  for name, args in (("input_size", (0, 3, 2)), ("hidden_size", (2, -1, 2)),
                     ("output_size", (2, 3, 1.5))):
    with pytest.raises(ValueError, match=name):
      jaxrnn.init_params(key, *args)
  with pytest.raises(ValueError, match="num_layers"):
    jaxrnn.init_params(key, 2, 3, 2, num_layers=0)
  with pytest.raises(ValueError, match=r"init\.scheme 'he'"):
    jaxrnn.init_params(key, 2, 3, 2, init="he")
  with pytest.raises(TypeError, match="init must be a jaxrnn.InitSpec"):
    jaxrnn.init_params(key, 2, 3, 2, init={"scheme": "normal"})
  with pytest.raises(TypeError, match="bidirectional"):
    jaxrnn.init_params(key, 2, 3, 2, bidirectional=1)
  with pytest.raises(TypeError, match="dtype"):
    jaxrnn.init_params(key, 2, 3, 2, dtype=jnp.int32)
  with pytest.raises(TypeError):                                  # num_layers is keyword-only
    jaxrnn.init_params(key, 2, 3, 2, 2)


@pytest.mark.parametrize("key", [0, np.array([0, 0]), jnp.array([0, 0], jnp.int32), None])
def test_a_key_that_is_not_a_jax_random_key_raises_naming_key(key):
  with pytest.raises(TypeError, match="key must be a jax.random key"):
    jaxrnn.init_params(key, 2, 3, 2)


def test_a_legacy_uint32_key_is_a_key():
  params = jaxrnn.init_params(jax.random.PRNGKey(0), 2, 3, 2)
  chex.assert_shape(params.layers[0][0].W_hh, (3, 3))


def test_a_model_too_large_for_memory_raises_before_allocating():
  """hidden_size=200000 needs ~640 GB of float64 parameters: a ValueError naming it, at once,
  rather than an out-of-memory failure while drawing them."""
  needed = 200000 * (200000 + 200000 + 1) * 8
  assert needed > jaxrnn.checks.device_memory()
  with pytest.raises(ValueError, match=r"hidden_size=200000.*GiB"):
    jaxrnn.init_params(jax.random.key(0), 3, 200000, 2)
