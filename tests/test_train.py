"""optax training: train steps against an independent reference, clipping, dropout, fit, evaluate.

The oracle is :func:`reference_loss`, a plain-JAX forward pass written here
with Python loops over time (no ``lax.scan``, no library code): its
``jax.grad`` is the gradient every train step must apply.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
from jaxrnn import data
from conftest import MODELS, random_problem

ACTS = {"tanh": jnp.tanh, "relu": jax.nn.relu}
OUT_ACTS = {"identity": lambda z: z, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh,
            "softmax": lambda z: jax.nn.softmax(z, axis=-1)}


def live_mask(num_steps, batch, lengths):
  """``[T, B]`` bool, ``t < lengths[b]``."""
  if lengths is None:
    return jnp.ones((num_steps, batch), bool)
  return jnp.arange(num_steps)[:, None] < jnp.asarray(lengths)[None, :]


def reference_forward(params, xs, h0, lengths=None, activation="tanh"):
  """Top-layer outputs ``[T, B, D*H]`` (zero past each end) and finals ``[L*D, B, H]``.

  A dead step (``t >= lengths[b]``) freezes the state, so the reverse
  direction starts from ``h0`` at each sequence's own last step.
  """
  act = ACTS[activation]
  num_steps, batch = xs.shape[:2]
  live = live_mask(num_steps, batch, lengths)[..., None]                # [T, B, 1]
  num_dirs = len(params.layers[0])
  x, finals = xs, []
  for l, layer in enumerate(params.layers):
    outs = []
    for d, cell in enumerate(layer):
      def step(h, inputs, cell=cell):
        x_t, live_t = inputs
        h = jnp.where(live_t, act(jnp.einsum("hi,bi->bh", cell.W_xh, x_t)
                                  + jnp.einsum("hk,bk->bh", cell.W_hh, h) + cell.b_h), h)
        return h, jnp.where(live_t, h, 0)
      h, hs = jax.lax.scan(step, h0[l * num_dirs + d], (x, live), reverse=d == 1)
      outs.append(hs)
      finals.append(h)
    x = jnp.concatenate(outs, axis=-1)
  return x, jnp.stack(finals)


def numpy_logits(params, batch, activation="tanh"):
  """``z [T, B, O]`` and the live ``[T, B]`` 0/1 weights, by a NumPy loop over ``(t, b)``."""
  act = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0)}[activation]
  xs = np.asarray(batch.xs)
  num_steps, size = xs.shape[:2]
  lengths = np.full(size, num_steps) if batch.lengths is None else np.asarray(batch.lengths)
  cells = [[jax.tree.map(np.asarray, c) for c in layer] for layer in params.layers]
  hidden = cells[0][0].W_hh.shape[0]
  top = np.zeros((num_steps, size, len(cells[0]) * hidden))
  for b in range(size):
    x = xs[:lengths[b], b]                                             # the live steps only
    for layer in cells:
      outs = []
      for d, c in enumerate(layer):
        h, hs = np.zeros(hidden), []
        for x_t in (x if d == 0 else x[::-1]):
          h = act(c.W_xh @ x_t + c.W_hh @ h + c.b_h)
          hs.append(h)
        outs.append(np.array(hs[::-1] if d == 1 else hs).reshape(len(x), hidden))
      x = np.concatenate(outs, axis=-1)
    top[:lengths[b], b] = x
  z = top @ np.asarray(params.W_hy).T + np.asarray(params.b_y)
  live = (np.arange(num_steps)[:, None] < lengths[None, :]).astype(float)
  if batch.target_mask is not None:
    live = live * np.asarray(batch.target_mask, float)
  return z, live


def reference_losses(params, batch, h0=None, activation="tanh", loss="cross_entropy",
                     output_activation="identity"):
  """``(z [T, B, O], L_t [T, B], w [T, B] 0/1)`` of the reference model."""
  num_steps, size = batch.xs.shape[:2]
  if h0 is None:
    num_states = len(params.layers) * len(params.layers[0])
    h0 = jnp.zeros((num_states, size, params.layers[0][0].W_hh.shape[0]), batch.xs.dtype)
  top, _ = reference_forward(params, batch.xs, h0, batch.lengths, activation)
  z = top @ params.W_hy.T + params.b_y
  if loss == "cross_entropy":
    onehot = jax.nn.one_hot(batch.targets, z.shape[-1], dtype=z.dtype)
    step = -jnp.sum(onehot * jax.nn.log_softmax(z, axis=-1), axis=-1)
  else:
    step = jnp.sum((OUT_ACTS[output_activation](z) - batch.targets) ** 2, axis=-1)
  w = live_mask(num_steps, size, batch.lengths).astype(z.dtype)
  if batch.target_mask is not None:
    w = w * jnp.asarray(batch.target_mask, z.dtype)
  return z, step, w


def reference_loss(params, batch, h0=None, activation="tanh", loss="cross_entropy",
                   output_activation="identity", reduction="sum"):
  """``sum_t w_t L_t`` (over the live count for ``"mean"``), independent of the library."""
  _, step, w = reference_losses(params, batch, h0, activation, loss, output_activation)
  total = jnp.sum(w * step)
  return total / jnp.maximum(w.sum(), 1) if reduction == "mean" else total


def max_diff(a, b):
  """Largest ``|a - b|`` over two pytrees of the same structure."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_norm(tree):
  return float(np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(tree))))


def check_param_metric(metrics, new_params):
  """The step reports the largest ``|p|`` of the updated params as ``param_max``."""
  assert set(metrics) == {"loss", "grad_norm", "param_max"}, sorted(metrics)
  expected = max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(new_params))
  np.testing.assert_allclose(metrics["param_max"], expected, rtol=1e-12)


def problem(num_layers, bidirectional, seed=0, **kwargs):
  return random_problem(seed, num_layers=num_layers, bidirectional=bidirectional, masked=True,
                        **kwargs)


# Each model is tested with its own specs (the 2-layer one with ReLU, the mean and lengths; the
# 1-layer one with a target mask only), on one shared problem, so the compiled steps and reference gradients are shared between tests.
SPECS = {(1, False): (jaxrnn.ModelSpec(activation="tanh"), jaxrnn.LossSpec(reduction="sum")),
         (2, True): (jaxrnn.ModelSpec(activation="relu"), jaxrnn.LossSpec(reduction="mean"))}
SGD = optax.sgd(0.1)


@functools.cache
def shared(num_layers, bidirectional):
  """``(params, batch, reference loss, reference gradient)`` of the model's shared problem."""
  params, batch, _ = problem(num_layers, bidirectional, seed=1)
  if num_layers == 1:          # the 1-layer model runs the recurrence without a length mask
    batch = batch._replace(lengths=None)
  model, loss = SPECS[num_layers, bidirectional]
  value, grads = jax.jit(jax.value_and_grad(functools.partial(
      reference_loss, activation=model.activation, reduction=loss.reduction)))(params, batch)
  return params, batch, value, grads


@functools.cache
def sgd_step(num_layers, bidirectional, gradient="fused"):
  model, loss = SPECS[num_layers, bidirectional]
  return jaxrnn.make_train_step(SGD, model=model, loss=loss,
                                compute=jaxrnn.ComputeSpec(gradient=gradient), donate=False)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_fused_autodiff_and_bptt_steps_apply_the_reference_gradient(num_layers, bidirectional):
  params, batch, value, grads = shared(num_layers, bidirectional)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  assert tree_norm(grads) > 1e-2                                  # a real gradient
  for gradient in ("fused", "autodiff", "bptt"):
    step = sgd_step(num_layers, bidirectional, gradient)
    new_params, _, metrics = step(params, SGD.init(params), batch)
    assert max_diff(new_params, expected) < 1e-10, gradient
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-12)
    np.testing.assert_allclose(metrics["grad_norm"], tree_norm(grads), rtol=1e-10)
    check_param_metric(metrics, expected)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_gradient_clipping_bounds_the_update(num_layers, bidirectional):
  params, batch, _, grads = shared(num_layers, bidirectional)
  model, loss = SPECS[num_layers, bidirectional]
  clip = 0.1 * tree_norm(grads)
  optimizer = jaxrnn.make_optimizer("sgd", 1.0, clip_norm=clip)
  step = jaxrnn.make_train_step(optimizer, model=model, loss=loss, donate=False)
  new_params, _, metrics = step(params, optimizer.init(params), batch)
  np.testing.assert_allclose(metrics["grad_norm"], tree_norm(grads), rtol=1e-10)
  change = jax.tree.map(jnp.subtract, new_params, params)
  np.testing.assert_allclose(tree_norm(change), clip, rtol=1e-9)
  # the clipped update points along the gradient: change = -clip g / ||g||
  scale = clip / tree_norm(grads)
  assert max_diff(change, jax.tree.map(lambda g: -scale * g, grads)) < 1e-12


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_any_optax_transformation_and_donation(num_layers, bidirectional):
  params, batch, _, grads = shared(num_layers, bidirectional)
  model, loss = SPECS[num_layers, bidirectional]
  optimizer = optax.chain(optax.clip(0.05), optax.lion(1e-2, b1=0.5))
  state = optimizer.init(params)
  updates, _ = optimizer.update(grads, state, params)
  expected = optax.apply_updates(params, updates)
  copy = jax.tree.map(jnp.copy, params)
  step = jaxrnn.make_train_step(optimizer, model=model, loss=loss)   # donates by default
  new_params, new_state, _ = step(copy, optimizer.init(copy), batch)
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(copy))    # buffers were donated
  assert max_diff(new_params, expected) < 1e-12
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_dropout_key_changes_the_step_and_the_same_key_reproduces_it(num_layers, bidirectional):
  params, batch, _, _ = shared(num_layers, bidirectional)
  model, loss = SPECS[num_layers, bidirectional]
  model = model._replace(dropout=0.3, input_dropout=0.3, state_dropout=0.3)
  step = jaxrnn.make_train_step(SGD, model=model, loss=loss, donate=False)
  state = SGD.init(params)
  run = lambda key: step(params, state, batch, key)
  first, again, other = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
  plain = sgd_step(num_layers, bidirectional)(params, state, batch)
  assert max_diff(first, again) == 0
  assert max_diff(first[0], other[0]) > 1e-4
  assert max_diff(first[0], plain[0]) > 1e-4
  assert abs(float(first[2]["loss"]) - float(other[2]["loss"])) > 1e-6


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_fit_learns_the_adding_problem_and_is_deterministic(num_layers, bidirectional):
  loss = jaxrnn.LossSpec("squared_error", "mean")
  key = jax.random.key(0)
  params = jaxrnn.init_params(key, 2, 16, 1, scheme="glorot", num_layers=num_layers,
                              bidirectional=bidirectional)
  optimizer = jaxrnn.make_optimizer("adam", 1e-2, clip_norm=1.0)
  train_step = jaxrnn.make_train_step(optimizer, loss=loss)
  batches = jax.jit(lambda step: data.adding_problem(jax.random.fold_in(key, step), 32, 8))
  seen, at_20 = [], []

  def callback(step, p, state, metrics):
    seen.append((step, metrics["loss"]))
    if step == 19:
      at_20.append(jax.tree.map(np.array, p))

  run = lambda num_steps, callback=None: jaxrnn.fit(
      params, optimizer, batches, num_steps, loss=loss, progress=False, train_step=train_step,
      callback=callback)
  result = run(150, callback)
  metrics = jaxrnn.make_eval_step(loss=loss)(
      result.params, data.adding_problem(jax.random.key(99), 200, 8))
  assert float(metrics["mse"]) < 0.1                      # predicting the mean scores ~0.167
  assert result.history["loss"][-10:].mean() < 0.1 * result.history["loss"][0]
  assert len(result.history) == 3 and {"loss", "grad_norm"} <= set(result.history)
  assert all(v.shape == (150,) for v in result.history.values())
  assert [s for s, _ in seen] == list(range(150))
  np.testing.assert_array_equal([v for _, v in seen], result.history["loss"])
  again = run(20)                                          # the same 20 steps, bit for bit
  assert max_diff(again.params, at_20[0]) == 0
  np.testing.assert_array_equal(again.history["loss"], result.history["loss"][:20])
  assert all(not leaf.is_deleted() for leaf in jax.tree.leaves(params))  # fit copies


def nan_at(bad_step, learning_rate=0.01):
  """SGD whose ``bad_step``-th update (counting from 0) is NaN: finite loss, NaN params."""
  def init(params):
    return jnp.zeros((), jnp.int32)

  def update(updates, count, params=None):
    scale = jnp.where(count == bad_step, jnp.nan, -learning_rate)
    return jax.tree.map(lambda g: scale * g, updates), count + 1
  return optax.GradientTransformation(init, update)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_fit_stops_on_a_non_finite_loss_naming_the_step(num_layers, bidirectional):
  params, good, _, _ = shared(num_layers, bidirectional)
  model, loss = SPECS[num_layers, bidirectional]
  bad = good._replace(xs=good.xs * jnp.nan)
  called = []
  with pytest.raises(FloatingPointError, match=r"step 13\b") as error:
    jaxrnn.fit(params, SGD, lambda step: bad if step == 13 else good, num_steps=6,
               start_step=10, model=model, loss=loss, progress=False,
               train_step=sgd_step(num_layers, bidirectional),
               callback=lambda step, *_: called.append(step))
  assert called == [10, 11, 12]
  assert "'loss': nan" in str(error.value)


@pytest.mark.parametrize("num_layers,bidirectional,optimizer,bad_step", [
    (1, False, nan_at(2), 2), (2, True, nan_at(2), 2), (1, False, optax.sgd(float("inf")), 0)],
    ids=["nan-update-1", "nan-update-2bi", "infinite-lr-1"])
def test_fit_stops_when_the_update_makes_params_non_finite(num_layers, bidirectional, optimizer,
                                                            bad_step):
  params, batch, _, _ = shared(num_layers, bidirectional)
  model, loss = SPECS[num_layers, bidirectional]
  called, finite = [], []

  def callback(step, p, state, metrics):
    called.append(step)
    finite.append(all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(p)))

  with pytest.raises(FloatingPointError, match=rf"step {bad_step}\b") as error:
    jaxrnn.fit(params, optimizer, lambda step: batch, num_steps=5, model=model, loss=loss,
               progress=False, callback=callback)
  assert called == list(range(bad_step)) and all(finite)
  message = str(error.value)
  assert "param_" in message and "'loss': nan" not in message   # the loss itself was finite


@pytest.mark.parametrize("num_steps", [-3, 2.0, True])
def test_fit_rejects_a_bad_number_of_steps(num_steps):
  params, batch, _, _ = shared(1, False)
  with pytest.raises(ValueError, match="num_steps"):
    jaxrnn.fit(params, SGD, lambda step: batch, num_steps=num_steps, progress=False)


def test_fit_with_zero_steps_returns_the_params():
  params, batch, _, _ = shared(1, False)
  result = jaxrnn.fit(params, SGD, lambda step: batch, num_steps=0, progress=False)
  assert max_diff(result.params, params) == 0 and result.history["loss"].shape == (0,)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_evaluate_accuracy_counts_only_live_steps(num_layers, bidirectional):
  params, batch, _, _ = shared(num_layers, bidirectional)
  model, loss = SPECS[num_layers, bidirectional]
  evaluate = jaxrnn.make_eval_step(model=model, loss=loss)
  metrics = evaluate(params, batch)
  z, w = numpy_logits(params, batch, model.activation)
  live = w > 0
  assert 0 < live.sum() < live.size
  targets = np.asarray(batch.targets)
  hits = np.argmax(z, axis=-1) == targets
  assert 0 < hits[live].mean() < 1
  np.testing.assert_allclose(metrics["accuracy"], hits[live].mean(), rtol=1e-12)
  log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
  step = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  expected = step[live].sum() / (live.sum() if loss.reduction == "mean" else 1)
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-12)
  # what dead steps hold does not count: make every dead step a hit, then a miss
  for dead in (np.argmax(z, -1), (np.argmax(z, -1) + 1) % z.shape[-1]):
    changed = evaluate(params, batch._replace(targets=jnp.asarray(np.where(live, targets, dead))))
    np.testing.assert_allclose(changed["accuracy"], metrics["accuracy"], rtol=1e-12)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_evaluate_mse_counts_only_live_steps(num_layers, bidirectional):
  params, batch, _ = random_problem(9, num_steps=7, batch=6, sizes=(3, 5, 3),
                                    num_layers=num_layers, bidirectional=bidirectional,
                                    loss="squared_error", masked=True)
  batch = batch._replace(lengths=jnp.array([7, 0, 3, 7, 1, 5]))
  model = jaxrnn.ModelSpec(output_activation="sigmoid")
  loss = jaxrnn.LossSpec("squared_error", "mean")
  metrics = jaxrnn.make_eval_step(model=model, loss=loss)(params, batch)
  z, w = numpy_logits(params, batch)
  live = w > 0
  assert 0 < live.sum() < live.size
  y = 1 / (1 + np.exp(-z))
  squared = ((y - np.asarray(batch.targets)) ** 2).mean(-1)
  np.testing.assert_allclose(metrics["mse"], squared[live].mean(), rtol=1e-12)
  np.testing.assert_allclose(metrics["loss"], (squared[live] * 3).sum() / live.sum(), rtol=1e-12)


def test_an_opt_state_of_another_model_or_optimizer_is_named():
  params, batch, _ = random_problem(5, 4, 2)
  step = jaxrnn.make_train_step(optax.adam(1e-2), donate=False)
  other = random_problem(5, 4, 2, sizes=(3, 7, 2)).params
  for opt_state in (optax.adam(1e-2).init(other), optax.sgd(1e-2).init(params)):
    with pytest.raises(ValueError, match="opt_state does not fit params"):
      step(params, opt_state, batch)
  assert np.isfinite(float(step(params, optax.adam(1e-2).init(params), batch)[2]["loss"]))
