"""Dropout: the masks (rates, shapes, one key per layer and direction), how unroll applies them
(against the NumPy loop), determinism from the key, and chunked = unchunked with dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from conftest import MODELS, random_problem
from jaxrnn.dropout import draw_masks as draw_masks_eager
from jaxrnn.params import Shape
from test_losses import value_and_grad
from test_unroll import assert_rel_close, numpy_unroll, unroll

T, B, I, H, O = 6, 4, 3, 5, 2
LENGTHS = jnp.array([6, 2, 0, 4])
RATES = jaxrnn.ModelSpec(dropout=0.3, input_dropout=0.2, state_dropout=0.25)
draw_masks = jax.jit(draw_masks_eager, static_argnums=(1, 2, 3, 4, 5))


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_mask_shapes_values_rates_and_keys(num_layers, bidirectional):
  D = 2 if bidirectional else 1
  shape = Shape(I, H, O, num_layers, D)
  num_steps, batch = 20, 500
  model = jaxrnn.ModelSpec(dropout=0.3, input_dropout=0.2, state_dropout=0.5)
  masks = draw_masks(jax.random.key(0), model, shape, num_steps, batch, jnp.float64)
  assert len(masks.between) == num_layers - 1
  for m in masks.between:
    assert m.shape == (num_steps, batch, D * H)
  widths = [I] + [D * H] * (num_layers - 1)
  for rate, kind, shapes in ((0.2, masks.inputs, [(batch, w) for w in widths]),
                             (0.5, masks.state, [(H,)] * num_layers)):
    assert len(kind) == num_layers and all(len(per_dir) == D for per_dir in kind)
    for l, per_dir in enumerate(kind):
      for m in per_dir:
        assert m.shape == shapes[l] and m.dtype == jnp.float64
        assert set(np.unique(np.asarray(m))) <= {0.0, 1 / (1 - rate)}
  flat_inputs = np.concatenate([np.ravel(m) for per_dir in masks.inputs for m in per_dir])
  assert abs(np.mean(flat_inputs == 0) - 0.2) < 0.04
  assert np.all(np.isin(np.asarray(masks.state[0][0]), (0.0, 2.0)))
  if num_layers > 1:
    assert abs(float(jnp.mean(masks.between[0] == 0)) - 0.3) < 0.02
    # A fresh between-layer mask at every step.
    assert not np.array_equal(masks.between[0][0], masks.between[0][1])
  # Independent per layer and direction (same shapes, different draws).
  same_shape = [m for per_dir in masks.inputs[1:] for m in per_dir] + list(masks.inputs[0])
  for i in range(len(same_shape)):
    for j in range(i):
      if same_shape[i].shape == same_shape[j].shape:
        assert not np.array_equal(same_shape[i], same_shape[j])
  again = draw_masks(jax.random.key(0), model, shape, num_steps, batch, jnp.float64)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), masks, again))
  other = draw_masks(jax.random.key(1), model, shape, num_steps, batch, jnp.float64)
  assert not np.array_equal(other.inputs[0][0], masks.inputs[0][0])
  assert draw_masks_eager(None, model, shape, num_steps, batch, jnp.float64) is None
  assert draw_masks_eager(jax.random.key(0), jaxrnn.ModelSpec(), shape, num_steps, batch,
                    jnp.float64) is None
  only = draw_masks(jax.random.key(0), jaxrnn.ModelSpec(input_dropout=0.1), shape, 3, 2,
                    jnp.float32)
  assert only.between is None and only.state is None and only.inputs[0][0].dtype == jnp.float32


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_unroll_applies_the_masks_as_the_numpy_loop(num_layers, bidirectional):
  prob = random_problem(1, T, B, num_layers=num_layers, bidirectional=bidirectional)
  key = jax.random.key(7)
  shape = Shape(I, H, O, num_layers, 2 if bidirectional else 1)
  masks = draw_masks(key, RATES, shape, T, B, jnp.float64)
  got = unroll(prob.params, prob.batch.xs, prob.h0, LENGTHS, model=RATES, key=key)
  want = numpy_unroll(prob.params, prob.batch.xs, prob.h0, LENGTHS, masks=masks)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-13)
  # Same key, same result; another key, another; no key, no dropout at all.
  again = unroll(prob.params, prob.batch.xs, prob.h0, LENGTHS, model=RATES, key=key)
  assert all(np.array_equal(a, b) for a, b in zip(got, again))
  other = unroll(prob.params, prob.batch.xs, prob.h0, LENGTHS, model=RATES,
                 key=jax.random.key(8))
  assert not np.array_equal(other.ys, got.ys)
  plain = numpy_unroll(prob.params, prob.batch.xs, prob.h0, LENGTHS)
  for a, b in zip(unroll(prob.params, prob.batch.xs, prob.h0, LENGTHS, model=RATES), plain):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-13)
  assert not np.allclose(np.asarray(got.ys), plain[1])


def identity_cell(width, W_hh=None):
  return jaxrnn.CellParams(jnp.eye(H, width), jnp.zeros((H, H)) if W_hh is None else W_hh,
                           jnp.zeros(H))


def test_between_layer_dropout_is_fresh_per_step_and_variational_masks_are_not():
  """ReLU identity layers make the masks visible in the outputs."""
  xs, key = jnp.ones((T, B, H)), jax.random.key(0)
  relu = lambda **rates: jaxrnn.ModelSpec(activation="relu", **rates)
  two = jaxrnn.RNNParams(((identity_cell(H),), (identity_cell(H),)), jnp.eye(H), jnp.zeros(H))
  hs = jaxrnn.unroll(two, xs, model=relu(dropout=0.5), key=key).hs
  assert set(np.unique(hs)) == {0.0, 2.0}
  assert len({np.asarray(h).tobytes() for h in hs}) > 1            # a fresh mask per step
  np.testing.assert_array_equal(jaxrnn.unroll(two, xs, model=relu(dropout=0.5)).hs, xs)
  one = jaxrnn.RNNParams(((identity_cell(H),),), jnp.eye(H), jnp.zeros(H))
  np.testing.assert_array_equal(jaxrnn.unroll(one, xs, model=relu(dropout=0.5), key=key).hs, xs)
  # Variational input dropout: the same [B, I] mask at every step.
  hs = jaxrnn.unroll(one, xs, model=relu(input_dropout=0.5), key=key).hs
  assert set(np.unique(hs)) == {0.0, 2.0}
  np.testing.assert_array_equal(hs, jnp.broadcast_to(hs[0], hs.shape))
  # Variational state dropout: h_t = relu(W_hh diag(m) h_{t-1}) = m^t h_0 with W_hh = I,
  # one [H] mask for the whole batch and every step.
  state = jaxrnn.RNNParams(((identity_cell(H, jnp.eye(H))._replace(W_xh=jnp.zeros((H, H))),),),
                           jnp.eye(H), jnp.zeros(H))
  h0 = jnp.ones((1, B, H))
  hs = jaxrnn.unroll(state, xs, h0, model=relu(state_dropout=0.5), key=key).hs
  m = hs[0, 0]
  assert set(np.unique(m)) == {0.0, 2.0}
  np.testing.assert_array_equal(hs, m ** jnp.arange(1, T + 1)[:, None, None] * h0)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_checkpointed_loss_with_dropout_equals_unchunked_with_the_same_key(num_layers):
  prob = random_problem(2, T, B, num_layers=num_layers, masked=True)
  key, spec = jax.random.key(3), jaxrnn.LossSpec(reduction="mean")
  plain = value_and_grad(prob.params, prob.batch, prob.h0, RATES, spec, key=key)
  chunked = value_and_grad(prob.params, prob.batch, prob.h0, RATES, spec,
                           jaxrnn.ComputeSpec(checkpoint_every=4), key=key)
  assert_rel_close(chunked, plain, 1e-10)
  undropped = value_and_grad(prob.params, prob.batch, prob.h0, RATES, spec)
  assert abs(float(plain[0][0] - undropped[0][0])) > 1e-3


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_fused_gradient_with_dropout_equals_autodiff(num_layers, bidirectional):
  prob = random_problem(4, T, B, num_layers=num_layers, bidirectional=bidirectional, masked=True)
  key, spec = jax.random.key(5), jaxrnn.LossSpec(reduction="mean")
  fused, autodiff = (value_and_grad(prob.params, prob.batch, prob.h0, RATES, spec,
                                    jaxrnn.ComputeSpec(gradient=g), key=key)
                     for g in ("fused", "autodiff"))
  assert_rel_close(fused, autodiff, 1e-10)


def test_bad_rates_name_the_field():
  prob = random_problem(0, T, B, num_layers=2, bidirectional=True)
  for field, bad in (("dropout", 1.0), ("input_dropout", -0.1), ("state_dropout", True),
                     ("dropout", "0.5")):
    with pytest.raises(ValueError, match=f"model.{field}"):
      jaxrnn.unroll(prob.params, prob.batch.xs, model=jaxrnn.ModelSpec(**{field: bad}),
                    key=jax.random.key(0))
