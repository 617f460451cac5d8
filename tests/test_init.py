"""jaxrnn.init_params: shapes, dtypes, determinism and the four schemes, for every model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from conftest import MODELS

I, H, O = 4, 6, 3
init_params = jax.jit(jaxrnn.init_params, static_argnums=(1, 2, 3, 4, 5, 6),
                      static_argnames=("scheme", "dtype", "scale", "num_layers", "bidirectional",
                                       "gain"))


def cells(params):
  return [cell for layer in params.layers for cell in layer]


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
@pytest.mark.parametrize("scheme", jaxrnn.spec.SCHEMES)
def test_shapes_dtypes_determinism(num_layers, bidirectional, scheme):
  kw = dict(scheme=scheme, dtype=jnp.float32, num_layers=num_layers, bidirectional=bidirectional)
  a = init_params(jax.random.key(3), I, H, O, **kw)
  b = init_params(jax.random.key(3), I, H, O, **kw)
  c = init_params(jax.random.key(4), I, H, O, **kw)
  D = 2 if bidirectional else 1
  assert isinstance(a, jaxrnn.RNNParams) and len(a.layers) == num_layers
  assert all(len(layer) == D and all(isinstance(cell, jaxrnn.CellParams) for cell in layer)
             for layer in a.layers)
  for l, layer in enumerate(a.layers):
    for cell in layer:
      assert cell.W_xh.shape == (H, I if l == 0 else D * H)
      assert cell.W_hh.shape == (H, H) and cell.b_h.shape == (H,)
      assert not np.any(np.asarray(cell.b_h))
  assert a.W_hy.shape == (O, D * H) and a.b_y.shape == (O,)
  assert not np.any(np.asarray(a.b_y))
  assert {x.dtype for x in jax.tree.leaves(a)} == {jnp.dtype(jnp.float32)}
  assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))
  assert not np.array_equal(a.W_hy, c.W_hy)
  # Every (layer, direction) gets its own weights.
  w_xh = [np.asarray(cell.W_xh) for cell in cells(a)]
  assert all(not np.array_equal(w_xh[i], w_xh[j]) for i in range(len(w_xh))
             for j in range(i) if w_xh[i].shape == w_xh[j].shape)
  if scheme in ("normal", "glorot"):
    w_hh = [np.asarray(cell.W_hh) for cell in cells(a)]
    assert all(not np.array_equal(w_hh[i], w_hh[j]) for i in range(len(w_hh)) for j in range(i))


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_orthogonal_and_identity_recurrent_weights(num_layers, bidirectional):
  kw = dict(num_layers=num_layers, bidirectional=bidirectional)
  for gain in (0.5,):
    orth = init_params(jax.random.key(0), 3, 8, 2, "orthogonal", gain=gain, **kw)
    ident = init_params(jax.random.key(0), 3, 8, 2, "identity", gain=gain, **kw)
    for cell in cells(orth):
      W = np.asarray(cell.W_hh)
      np.testing.assert_allclose(W @ W.T, gain ** 2 * np.eye(8), atol=1e-12)
    for cell in cells(ident):
      np.testing.assert_array_equal(cell.W_hh, gain * np.eye(8))
      assert 0 < float(jnp.std(cell.W_xh)) < 0.005                # IRNN: N(0, 0.001^2)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_glorot_limit_and_normal_scale(num_layers, bidirectional):
  kw = dict(num_layers=num_layers, bidirectional=bidirectional)
  params = init_params(jax.random.key(0), 30, 50, 20, "glorot", **kw)
  for w in [cell.W_xh for cell in cells(params)] + [params.W_hy]:
    limit = np.sqrt(6 / sum(w.shape))
    assert limit * 0.9 < float(jnp.max(jnp.abs(w))) <= limit
  params = init_params(jax.random.key(0), 100, 100, 100, scale=0.05, **kw)
  for w in jax.tree.leaves(params):
    if w.ndim == 2:
      assert abs(float(jnp.std(w)) - 0.05) < 0.003


def test_default_dtype_follows_x64():
  for num_layers, bidirectional in MODELS:
    kw = dict(num_layers=num_layers, bidirectional=bidirectional)
    with jax.enable_x64(False):
      params = jaxrnn.init_params(jax.random.key(0), 2, 3, 1, **kw)
      assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    params = jaxrnn.init_params(jax.random.key(0), 2, 3, 1, **kw)
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float64)}


def test_bad_arguments_name_the_argument():
  key = jax.random.key(0)
  for name, args in (("input_size", (0, 3, 2)), ("hidden_size", (2, -1, 2)),
                     ("output_size", (2, 3, 1.5))):
    with pytest.raises(ValueError, match=name):
      jaxrnn.init_params(key, *args)
  with pytest.raises(ValueError, match="num_layers"):
    jaxrnn.init_params(key, 2, 3, 2, num_layers=0)
  with pytest.raises(ValueError, match="scheme"):
    jaxrnn.init_params(key, 2, 3, 2, scheme="he")
  with pytest.raises(ValueError, match="scale"):
    jaxrnn.init_params(key, 2, 3, 2, scale=0.0)
  with pytest.raises(ValueError, match="gain"):
    jaxrnn.init_params(key, 2, 3, 2, gain=float("nan"))
  with pytest.raises(TypeError, match="bidirectional"):
    jaxrnn.init_params(key, 2, 3, 2, bidirectional=1)
  with pytest.raises(TypeError, match="dtype"):
    jaxrnn.init_params(key, 2, 3, 2, dtype=jnp.int32)
