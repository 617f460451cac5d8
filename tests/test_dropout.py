"""Dropout: the masks (shapes, values 0 and 1/(1-p), keep rate 1-p, one independent draw per kind,
layer, direction and step, determinism from the key), how unroll applies them (against the NumPy
reference with the masks folded in), chunked = unchunked and fused = autodiff with dropout."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import jaxrnn
import reference
from conftest import MODELS, random_problem
from jaxrnn.dropout import draw_masks as draw_masks_eager
from jaxrnn.pytrees import Shape

T, B, I, H, O = 6, 4, 3, 5, 2
LENGTHS = np.array([6, 2, 0, 4])
RATES = jaxrnn.ModelSpec(dropout=0.3, input_dropout=0.2, state_dropout=0.25)
draw_masks = jax.jit(draw_masks_eager, static_argnums=(1, 2, 3, 4, 5))


def kept(mask):
  """The kept entries of a mask, flattened, as 0.0/1.0."""
  return (np.ravel(np.asarray(mask)) > 0).astype(np.float64)


def reference_outputs(params, xs, h0, lengths, masks, activation="tanh"):
  """:class:`jaxrnn.Outputs` of the NumPy reference with dropout, as ModelSpec documents it.

  Per sequence ``b``: the input mask ``m [I_l]`` of a cell is the same at every step, so
  ``W_xh (m * x_t) = (W_xh diag(m)) x_t``; the state mask ``s [H]`` makes the recurrent weights
  ``W_hh diag(s)``; the between-layer mask multiplies layer ``l``'s output ``[T, D*H]`` before
  layer ``l + 1`` reads it. Each layer runs as a one-layer model of ``reference.forward``.
  """
  p = reference.as_numpy(params)
  layers = p[0]
  num_dirs, batch = len(layers[0]), np.shape(xs)[1]
  xs, h0 = np.asarray(xs, np.float64), np.asarray(h0, np.float64)
  tops, finals = [], []
  for b in range(batch):
    x, lens, final_b = xs[:, b:b + 1], None if lengths is None else np.asarray(lengths)[b:b + 1], []
    for l, layer in enumerate(layers):
      cells = []
      for d, (W_xh, W_hh, b_h) in enumerate(layer):
        if masks.inputs is not None:
          W_xh = W_xh * np.asarray(masks.inputs[l][d])[b][None, :]
        if masks.state is not None:
          W_hh = W_hh * np.asarray(masks.state[l][d])[None, :]
        cells.append((W_xh, W_hh, b_h))
      x, _, final, _ = reference.forward(((tuple(cells),), None, None), x,
                                         h0[l * num_dirs:(l + 1) * num_dirs, b:b + 1], lens,
                                         activation)
      final_b.append(final)
      if masks.between is not None and l < len(layers) - 1:
        x = x * np.asarray(masks.between[l])[:, b:b + 1]
    tops.append(x)
    finals.append(np.concatenate(final_b))
  top = np.concatenate(tops, axis=1)
  return jaxrnn.Outputs(top, reference.readout(p, top, "identity", lengths),
                        np.concatenate(finals, axis=1))


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_mask_shapes_values_and_what_draws_none(num_layers, bidirectional):
  D = 2 if bidirectional else 1
  shape = Shape(I, H, O, num_layers, D)
  num_steps, batch = 20, 50
  masks = draw_masks(jax.random.key(0), RATES, shape, num_steps, batch, jnp.float64)
  assert isinstance(masks, jaxrnn.dropout.DropoutMasks)
  assert len(masks.between) == num_layers - 1
  if num_layers > 1:
    chex.assert_shape(list(masks.between), (num_steps, batch, D * H))
  widths = [I] + [D * H] * (num_layers - 1)
  for kind, shapes in ((masks.inputs, [(batch, w) for w in widths]),
                       (masks.state, [(H,)] * num_layers)):
    assert len(kind) == num_layers and all(len(per_dir) == D for per_dir in kind)
    for l, per_dir in enumerate(kind):
      chex.assert_shape(list(per_dir), shapes[l])
      chex.assert_type(list(per_dir), jnp.float64)
  if num_layers > 1:
    # A fresh between-layer mask at every step.
    assert not np.array_equal(masks.between[0][0], masks.between[0][1])
  assert draw_masks_eager(None, RATES, shape, num_steps, batch, jnp.float64) is None
  assert draw_masks_eager(jax.random.key(0), jaxrnn.ModelSpec(), shape, num_steps, batch,
                          jnp.float64) is None
  only = draw_masks(jax.random.key(0), jaxrnn.ModelSpec(input_dropout=0.1), shape, 3, 2,
                    jnp.float32)
  assert only.between is None and only.state is None
  chex.assert_type(jax.tree.leaves(only.inputs), jnp.float32)
  assert set(np.unique(np.asarray(only.inputs[0][0]))) <= {0, np.float32(1) / np.float32(0.9)}


@pytest.mark.parametrize("num_layers,bidirectional", MODELS + [(3, False)])
def test_masks_are_independent_draws_with_keep_rate_1_minus_p(num_layers, bidirectional):
  """What the masks must be, stated without the library's key derivation: every mask entry is
  1/(1-p) with probability 1-p and 0 otherwise, and the masks of the three kinds, of every layer
  and direction, of every step (between layers), and of two keys are independent draws: any
  two of them are uncorrelated. (Masks drawn from one key with a shared stream of random bits,
  e.g. input masks from the state masks' key, agree on their common prefix: correlation 1.)"""
  D = 2 if bidirectional else 1
  n = 1024                                  # compared prefix: the state masks' size H
  shape = Shape(4, n, O, num_layers, D)
  num_steps, batch = 3, 256                 # layer 0's input masks: 256 x 4 = 1024 entries
  model = jaxrnn.ModelSpec(dropout=0.3, input_dropout=0.2, state_dropout=0.5)
  rates = {"between": 0.3, "inputs": 0.2, "state": 0.5}
  draws = {k: draw_masks(jax.random.key(k), model, shape, num_steps, batch, jnp.float64)
           for k in (0, 1)}
  chex.assert_trees_all_equal(draw_masks(jax.random.key(0), model, shape, num_steps, batch,
                                         jnp.float64), draws[0])      # equal keys, equal masks
  streams = {}
  for k, masks in draws.items():
    for l, m in enumerate(masks.between):
      for t in range(num_steps):
        streams[k, "between", l, t] = m[t]
    for kind in ("inputs", "state"):
      for l, per_dir in enumerate(getattr(masks, kind)):
        for d, m in enumerate(per_dir):
          streams[k, kind, l, d] = m
  for name, m in streams.items():
    p = rates[name[1]]
    values = np.unique(np.asarray(m))
    np.testing.assert_array_equal(values, [0.0, 1 / (1 - p)], err_msg=str(name))
    assert abs(kept(m).mean() - (1 - p)) < 6 * np.sqrt(p * (1 - p) / np.size(m)), name
  names = list(streams)
  prefixes = np.stack([kept(streams[name])[:n] for name in names])        # [S, n]
  corr = np.corrcoef(prefixes)
  worst = np.max(np.abs(corr - np.eye(len(names))))
  # Independent: |corr| ~ 1/sqrt(n) = 0.03; 0.2 is more than 6 standard deviations.
  assert worst < 0.2, [(names[i], names[j], corr[i, j]) for i, j in zip(
      *np.nonzero(np.abs(np.triu(corr, 1)) >= 0.2))]


class TestDropoutVariants(chex.TestCase):
  """jaxrnn.unroll with a dropout key, jitted and not (chex variants)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODELS)
  def test_unroll_applies_the_masks_as_the_reference(self, num_layers, bidirectional):
    prob = random_problem(1, T, B, num_layers=num_layers, bidirectional=bidirectional)
    key = jax.random.key(7)
    shape = Shape(I, H, O, num_layers, 2 if bidirectional else 1)
    masks = draw_masks(key, RATES, shape, T, B, jnp.float64)
    run = self.variant(functools.partial(jaxrnn.unroll, model=RATES))
    lengths = jnp.asarray(LENGTHS)
    got = run(prob.params, prob.batch.xs, prob.h0, lengths, key=key)
    want = reference_outputs(prob.params, prob.batch.xs, prob.h0, LENGTHS, masks)
    chex.assert_trees_all_close(got, want, rtol=1e-12, atol=1e-13)
    # Same key, same result; another key, another; no key, no dropout at all.
    chex.assert_trees_all_equal(run(prob.params, prob.batch.xs, prob.h0, lengths, key=key), got)
    other = run(prob.params, prob.batch.xs, prob.h0, lengths, key=jax.random.key(8))
    assert not np.allclose(other.ys, got.ys)
    plain = reference_outputs(prob.params, prob.batch.xs, prob.h0, LENGTHS,
                              jaxrnn.dropout.DropoutMasks(None, None, None))
    chex.assert_trees_all_close(run(prob.params, prob.batch.xs, prob.h0, lengths), plain,
                                rtol=1e-12, atol=1e-13)
    assert not np.allclose(np.asarray(got.ys), plain.ys)


def identity_cell(width, W_hh=None):
  return jaxrnn.CellParams(jnp.eye(H, width), jnp.zeros((H, H)) if W_hh is None else W_hh,
                           jnp.zeros(H))


def test_between_layer_dropout_is_fresh_per_step_and_variational_masks_are_not():
  """ReLU identity layers make the masks visible in the outputs."""
  xs, key = jnp.ones((T, B, H)), jax.random.key(0)
  relu = lambda **rates: jaxrnn.ModelSpec(activation="relu", **rates)
  two = jaxrnn.RNNParams(((identity_cell(H),), (identity_cell(H),)), jnp.eye(H), jnp.zeros(H))
  hs = jaxrnn.unroll(two, xs, model=relu(dropout=0.5), key=key).hs
  np.testing.assert_array_equal(np.unique(hs), [0.0, 2.0])
  assert len({np.asarray(h).tobytes() for h in hs}) > 1            # a fresh mask per step
  chex.assert_trees_all_equal(jaxrnn.unroll(two, xs, model=relu(dropout=0.5)).hs, xs)
  one = jaxrnn.RNNParams(((identity_cell(H),),), jnp.eye(H), jnp.zeros(H))
  chex.assert_trees_all_equal(jaxrnn.unroll(one, xs, model=relu(dropout=0.5), key=key).hs, xs)
  # Variational input dropout: the same [B, I] mask at every step.
  hs = jaxrnn.unroll(one, xs, model=relu(input_dropout=0.5), key=key).hs
  np.testing.assert_array_equal(np.unique(hs), [0.0, 2.0])
  chex.assert_trees_all_equal(hs, jnp.broadcast_to(hs[0], hs.shape))
  # Variational state dropout: h_t = relu(W_hh diag(m) h_{t-1}) = m^t h_0 with W_hh = I,
  # one [H] mask for the whole batch and every step.
  state = jaxrnn.RNNParams(((identity_cell(H, jnp.eye(H))._replace(W_xh=jnp.zeros((H, H))),),),
                           jnp.eye(H), jnp.zeros(H))
  h0 = jnp.ones((1, B, H))
  hs = jaxrnn.unroll(state, xs, h0, model=relu(state_dropout=0.5), key=key).hs
  m = hs[0, 0]
  np.testing.assert_array_equal(np.unique(m), [0.0, 2.0])
  chex.assert_trees_all_equal(hs, m ** jnp.arange(1, T + 1)[:, None, None] * h0)


@functools.partial(jax.jit, static_argnames=("model", "loss", "compute"))
def value_and_grad(params, batch, h0, key, model, loss, compute=jaxrnn.ComputeSpec()):
  """``((L, final), (dL/dparams, dL/dh0))`` of jaxrnn.sequence_loss."""
  fn = lambda p, h: jaxrnn.sequence_loss(p, batch, h, model=model, loss=loss, compute=compute,
                                         key=key)
  return jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(params, h0)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_checkpointed_loss_with_dropout_equals_unchunked_with_the_same_key(num_layers):
  prob = random_problem(2, T, B, num_layers=num_layers, masked=True)
  key, spec = jax.random.key(3), jaxrnn.LossSpec(reduction="mean")
  plain = value_and_grad(prob.params, prob.batch, prob.h0, key, RATES, spec)
  chunked = value_and_grad(prob.params, prob.batch, prob.h0, key, RATES, spec,
                           jaxrnn.ComputeSpec(checkpoint_every=4))
  chex.assert_trees_all_close(chunked, plain, rtol=1e-10, atol=1e-13)
  undropped = value_and_grad(prob.params, prob.batch, prob.h0, None, RATES, spec)
  assert abs(float(plain[0][0] - undropped[0][0])) > 1e-3


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_fused_gradient_with_dropout_equals_autodiff(num_layers, bidirectional):
  prob = random_problem(4, T, B, num_layers=num_layers, bidirectional=bidirectional, masked=True)
  key, spec = jax.random.key(5), jaxrnn.LossSpec(reduction="mean")
  fused, autodiff = (value_and_grad(prob.params, prob.batch, prob.h0, key, RATES, spec,
                                    jaxrnn.ComputeSpec(gradient=g))
                     for g in ("fused", "autodiff"))
  chex.assert_trees_all_close(fused, autodiff, rtol=1e-10, atol=1e-13)
  assert float(jnp.max(jnp.abs(fused[1][0].W_hy))) > 1e-3           # a non-trivial gradient


def test_fused_step_in_chunks_keeping_every_state_with_dropout_equals_autodiff(monkeypatch):
  """A 2-layer fused step past ``FUSED_STEPS_LIMIT`` (lowered to 4 here: T = 6 runs in 2 chunks
  of 3, every state kept) gives autodiff's numbers over the whole sequence with the same key
  (every kind of dropout, lengths and a target mask)."""
  monkeypatch.setattr(jaxrnn.spec, "FUSED_STEPS_LIMIT", 4)
  monkeypatch.setattr(jaxrnn.spec, "FUSED_CHUNK", 4)
  prob = random_problem(7, T, B, num_layers=2, masked=True)
  assert jaxrnn.spec.fused_chunk(jaxrnn.pytrees.shape_of(prob.params), T) == 3
  key, spec = jax.random.key(11), jaxrnn.LossSpec(reduction="mean")
  retraced = jax.jit(value_and_grad.__wrapped__, static_argnames=("model", "loss", "compute"))
  fused, autodiff = (retraced(prob.params, prob.batch, prob.h0, key, RATES, spec,
                              jaxrnn.ComputeSpec(gradient=g, checkpoint_every=None))
                     for g in ("fused", "autodiff"))
  chex.assert_trees_all_close(fused, autodiff, rtol=1e-10, atol=1e-13)
  assert float(jnp.max(jnp.abs(fused[1][0].layers[0][0].W_hh))) > 1e-3


def test_loss_and_grad_and_the_train_step_apply_the_dropout_of_their_key():
  """The public gradient and the train step draw the masks of ``key`` as unroll does: their loss
  is the reference's sum of cross-entropies with those masks, and no key means no dropout."""
  prob = random_problem(6, T, B, num_layers=2)
  key, zeros = jax.random.key(9), jnp.zeros((2, B, H), jnp.float64)
  masks = draw_masks(key, RATES, Shape(I, H, O, 2, 1), T, B, jnp.float64)
  cross_entropy = lambda masks: np.sum(reference.step_losses(
      reference_outputs(prob.params, prob.batch.xs, zeros, None, masks).ys, prob.batch.targets,
      "cross_entropy", "identity"))
  want, plain = cross_entropy(masks), cross_entropy(jaxrnn.dropout.DropoutMasks(None, None, None))
  assert abs(want - plain) > 1e-2
  value, grads = jax.jit(jaxrnn.loss_and_grad, static_argnames="model")(
      prob.params, prob.batch, model=RATES, key=key)
  np.testing.assert_allclose(float(value), want, rtol=1e-12)
  no_key, plain_grads = jaxrnn.loss_and_grad(prob.params, prob.batch, model=RATES)
  np.testing.assert_allclose(float(no_key), plain, rtol=1e-12)
  assert not np.allclose(grads.W_hy, plain_grads.W_hy)
  step = jaxrnn.make_train_step(optax.sgd(0.0), model=RATES, donate=False)
  _, _, metrics = step(prob.params, optax.sgd(0.0).init(prob.params), prob.batch, key)
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-12)


@pytest.mark.parametrize("field,bad", [("dropout", 1.0), ("input_dropout", -0.1),
                                       ("state_dropout", True), ("dropout", "0.5"),
                                       ("state_dropout", float("nan"))])
def test_bad_rates_fail_when_the_spec_is_built_naming_the_field(field, bad):
  with pytest.raises(ValueError, match=f"model.{field}"):
    jaxrnn.ModelSpec(**{field: bad})
