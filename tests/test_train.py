"""optax training against the NumPy reference (tests/reference.py): train steps, clipping, dropout,
loss_and_grad and evaluate (jitted and not), fit, and that the steps compile once.

The oracle is :func:`reference.loss` and :func:`reference.bptt` (NumPy loops, no JAX): the
gradient every train step must apply. Multi-device (mesh) cases run in test_parallel.
"""

import collections
import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tqdm.std
from absl.testing import parameterized

import jaxrnn
import reference
from conftest import COMPILE_EVENTS, MODELS, random_problem
from jaxrnn.app import data


def reference_value_and_grad(params, batch, model, loss, h0=None):
  """``(L, dL/dparams)`` of the NumPy reference model."""
  kwargs = dict(h0=h0, lengths=batch.lengths, target_mask=batch.target_mask,
                activation=model.activation, output_activation=model.output_activation,
                loss=loss.loss, reduction=loss.reduction)
  value, _ = reference.loss(params, batch.xs, batch.targets, **kwargs)
  grads, _ = reference.bptt(params, batch.xs, batch.targets, **kwargs)
  return value, grads


def tree_norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x))) for x in jax.tree.leaves(tree))))


def scaled(tree, scale):
  return jax.tree.map(lambda x: scale * np.asarray(x), tree)


def check_param_metric(metrics, new_params):
  """The step reports the largest ``|p|`` of the updated params as ``param_max``."""
  assert set(metrics) == {"loss", "grad_norm", "param_max"}, sorted(metrics)
  expected = max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(new_params))
  np.testing.assert_allclose(metrics["param_max"], expected, rtol=1e-12)


# Each model is tested with its own specs (the 2-layer one with ReLU, the mean and lengths; the
# 1-layer one with a target mask only), on one shared problem, so the compiled steps and the
# reference gradients are shared between tests.
SPECS = {(1, False): (jaxrnn.ModelSpec(activation="tanh"), jaxrnn.LossSpec(reduction="sum")),
         (2, True): (jaxrnn.ModelSpec(activation="relu"), jaxrnn.LossSpec(reduction="mean"))}
SGD = optax.sgd(0.1)


@functools.cache
def shared(num_layers, bidirectional):
  """``(params, batch, reference loss, reference gradient)`` of the model's shared problem."""
  params, batch, _ = random_problem(1, num_layers=num_layers, bidirectional=bidirectional,
                                    masked=True)
  if num_layers == 1:          # the 1-layer model runs the recurrence without a length mask
    batch = batch._replace(lengths=None)
  model, loss = SPECS[num_layers, bidirectional]
  value, grads = reference_value_and_grad(params, batch, model, loss)
  assert tree_norm(grads) > 1e-2                                   # a real gradient
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
  for gradient in ("fused", "autodiff", "bptt"):
    new_params, _, metrics = sgd_step(num_layers, bidirectional, gradient)(
        params, SGD.init(params), batch)
    chex.assert_trees_all_close(new_params, expected, atol=1e-10, rtol=0)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-12)
    np.testing.assert_allclose(metrics["grad_norm"], tree_norm(grads), rtol=1e-10)
    check_param_metric(metrics, expected)


class TestLossAndGradAndEvaluate(chex.TestCase):
  """jaxrnn.loss_and_grad and jaxrnn.evaluate, jitted and not (chex variants), against NumPy."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODELS)
  def test_loss_and_grad_is_the_reference(self, num_layers, bidirectional):
    params, batch, value, grads = shared(num_layers, bidirectional)
    model, loss = SPECS[num_layers, bidirectional]
    for gradient in ("fused", "bptt"):      # "autodiff": in the train step test
      run = self.variant(functools.partial(jaxrnn.loss_and_grad, model=model, loss=loss,
                                           compute=jaxrnn.ComputeSpec(gradient=gradient)))
      got_value, got_grads = run(params, batch)
      np.testing.assert_allclose(got_value, value, rtol=1e-12)
      chex.assert_trees_all_equal_shapes_and_dtypes(got_grads, params)
      chex.assert_trees_all_close(got_grads, grads, atol=1e-10, rtol=0)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODELS)
  def test_evaluate_accuracy_counts_only_live_steps(self, num_layers, bidirectional):
    params, batch, _, _ = shared(num_layers, bidirectional)
    model, loss = SPECS[num_layers, bidirectional]
    evaluate = self.variant(functools.partial(jaxrnn.evaluate, model=model, loss=loss))
    metrics = evaluate(params, batch)
    assert set(metrics) == {"loss", "accuracy"}
    top = reference.forward(params, batch.xs, lengths=batch.lengths, activation=model.activation)[0]
    z = reference.logits(params, top)                                   # [T, B, O]
    live = reference.loss_weights(batch.lengths, batch.target_mask, *z.shape[:2], "sum") > 0
    assert 0 < live.sum() < live.size
    targets = np.asarray(batch.targets)
    hits = np.argmax(z, axis=-1) == targets
    assert 0 < hits[live].mean() < 1
    np.testing.assert_allclose(metrics["accuracy"], hits[live].mean(), rtol=1e-12)
    value, _ = reference.loss(params, batch.xs, batch.targets, lengths=batch.lengths,
                              target_mask=batch.target_mask, activation=model.activation,
                              reduction=loss.reduction)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-12)
    # what dead steps hold does not count: make every dead step a hit, then a miss
    for dead in (np.argmax(z, -1), (np.argmax(z, -1) + 1) % z.shape[-1]):
      changed = evaluate(params, batch._replace(targets=jnp.asarray(np.where(live, targets, dead))))
      np.testing.assert_allclose(changed["accuracy"], metrics["accuracy"], rtol=1e-12)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODELS)
  def test_evaluate_mse_counts_only_live_steps(self, num_layers, bidirectional):
    params, batch, _ = random_problem(9, num_steps=7, batch=6, sizes=(3, 5, 3),
                                      num_layers=num_layers, bidirectional=bidirectional,
                                      loss="squared_error", masked=True)
    batch = batch._replace(lengths=jnp.array([7, 0, 3, 7, 1, 5]))
    model = jaxrnn.ModelSpec(output_activation="sigmoid")
    loss = jaxrnn.LossSpec("squared_error", "mean")
    metrics = self.variant(functools.partial(jaxrnn.evaluate, model=model, loss=loss))(
        params, batch)
    assert set(metrics) == {"loss", "mse"}
    top = reference.forward(params, batch.xs, lengths=batch.lengths)[0]
    y = reference.readout(params, top, "sigmoid", batch.lengths)
    live = reference.loss_weights(batch.lengths, batch.target_mask, 7, 6, "sum") > 0
    assert 0 < live.sum() < live.size
    squared = ((y - np.asarray(batch.targets)) ** 2).mean(-1)
    np.testing.assert_allclose(metrics["mse"], squared[live].mean(), rtol=1e-12)
    np.testing.assert_allclose(metrics["loss"], (squared[live] * 3).sum() / live.sum(), rtol=1e-12)


# --- the optimizer --------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_make_optimizer_clips_the_gradient_before_the_optimizer(num_layers, bidirectional):
  """SGD's update is ``-lr * clip(g)``: clipping after SGD would clip ``-lr * g`` instead, which
  differs whenever ``lr != 1``."""
  params, _, _, grads = shared(num_layers, bidirectional)
  norm, lr = tree_norm(grads), 0.3
  grads = jax.tree.map(jnp.asarray, grads)
  for clip, factor in ((0.1 * norm, 0.1), (10 * norm, 1.0), (float("inf"), 1.0)):
    optimizer = jaxrnn.make_optimizer("sgd", lr, clip_norm=clip)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    chex.assert_trees_all_close(updates, scaled(grads, -lr * factor), rtol=1e-12, atol=1e-15)
  # an inf clip keeps the state's structure of a finite one (a checkpoint fits both)
  chex.assert_trees_all_equal_structs(
      jaxrnn.make_optimizer("sgd", lr, clip_norm=float("inf")).init(params),
      jaxrnn.make_optimizer("sgd", lr, clip_norm=1.0).init(params))


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_the_step_clips_the_update_and_reports_the_unclipped_norm(num_layers, bidirectional):
  params, batch, _, grads = shared(num_layers, bidirectional)
  model, loss = SPECS[num_layers, bidirectional]
  clip, lr = 0.1 * tree_norm(grads), 0.5
  optimizer = jaxrnn.make_optimizer("sgd", lr, clip_norm=clip)
  step = jaxrnn.make_train_step(optimizer, model=model, loss=loss, donate=False)
  new_params, _, metrics = step(params, optimizer.init(params), batch)
  np.testing.assert_allclose(metrics["grad_norm"], tree_norm(grads), rtol=1e-10)
  change = jax.tree.map(jnp.subtract, new_params, params)
  np.testing.assert_allclose(tree_norm(change), lr * clip, rtol=1e-9)
  # the clipped update points along the gradient: change = -lr clip g / ||g||
  chex.assert_trees_all_close(change, scaled(grads, -lr * clip / tree_norm(grads)), atol=1e-12,
                              rtol=0)


@pytest.mark.parametrize("name,kwargs,match", [
    ("sgd", dict(momentum="x"), "momentum"),
    ("sgd", dict(momentum=float("nan")), "momentum"),
    ("adamw", dict(weight_decay=[0.1]), "weight_decay"),
    ("sgd", dict(momentum=0.9, nesterov="yes"), "nesterov"),
    ("nadam", {}, "optimizer"),
    ("sgd", dict(clip_norm=0.0), "clip_norm"),
    ("sgd", dict(clip_norm=-1.0), "clip_norm"),
    ("sgd", dict(learning_rate=float("nan")), "learning_rate"),
    ("sgd", dict(learning_rate=0.0), "learning_rate"),
])
def test_make_optimizer_rejects_bad_options_when_built(name, kwargs, match):
  """A bad option raises in make_optimizer itself, not at the first step."""
  with pytest.raises(ValueError, match=match):
    jaxrnn.make_optimizer(name, **kwargs)


def test_make_optimizer_names_an_option_the_optimizer_does_not_take():
  with pytest.raises(TypeError, match="optimizer 'sgd'"):
    jaxrnn.make_optimizer("sgd", 0.1, beta=0.5)
  assert isinstance(jaxrnn.make_optimizer("sgd", 0.1, momentum=0.9, nesterov=True),
                    optax.GradientTransformation)


# --- the train step -------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_any_optax_transformation_and_donation(num_layers, bidirectional):
  params, batch, _, grads = shared(num_layers, bidirectional)
  model, loss = SPECS[num_layers, bidirectional]
  optimizer = optax.chain(optax.clip(0.05), optax.lion(1e-2, b1=0.5))
  state = optimizer.init(params)
  updates, _ = optimizer.update(jax.tree.map(jnp.asarray, grads), state, params)
  expected = optax.apply_updates(params, updates)
  copy = jax.tree.map(jnp.copy, params)
  step = jaxrnn.make_train_step(optimizer, model=model, loss=loss)   # donates by default
  old_state = optimizer.init(copy)
  new_params, new_state, _ = step(copy, old_state, batch)
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(copy))    # buffers were donated
  chex.assert_trees_all_close(new_params, expected, atol=1e-12, rtol=0)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  # reusing what was donated is named, not a crash deep inside XLA
  with pytest.raises(ValueError, match="donated to an earlier step.*donate=False"):
    step(copy, new_state, batch)
  for fresh in (jaxrnn.make_train_step(optimizer, model=model, loss=loss),   # no params seen yet
                jaxrnn.make_train_step(optimizer, model=model, loss=loss, donate=False)):
    for donated in ((copy, new_state), (params, old_state)):
      with pytest.raises(ValueError, match="donated to an earlier step"):
        fresh(*donated, batch)
  with pytest.raises(ValueError, match=r"params\.W_hy was deleted \(donated"):
    jaxrnn.loss_and_grad(copy, batch, model=model, loss=loss)
  params_again, _, _ = step(new_params, new_state, batch)            # the returned ones work
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(new_params))
  chex.assert_tree_all_finite(params_again)


def test_tied_weights_need_donate_false():
  """One array in two leaves cannot be updated in place twice: a donating step says so."""
  params, batch, _ = random_problem(2, sizes=(3, 5, 5))      # H == O: b_h and b_y can be tied
  tied = params._replace(b_y=params.layers[0][0].b_h)
  optimizer = optax.sgd(0.1)
  with pytest.raises(ValueError, match="tied weights.*donate=False"):
    jaxrnn.make_train_step(optimizer)(tied, optimizer.init(tied), batch)
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(tied))     # nothing was donated
  untied = params._replace(b_y=jnp.copy(params.layers[0][0].b_h))
  step = jaxrnn.make_train_step(optimizer, donate=False)
  chex.assert_trees_all_equal(step(tied, optimizer.init(tied), batch),
                              step(untied, optimizer.init(untied), batch))
  # a step that donates nothing may be traced inside the caller's own jit (its checks see tracers)
  chex.assert_trees_all_close(jax.jit(step)(untied, optimizer.init(untied), batch),
                              step(untied, optimizer.init(untied), batch), atol=1e-12, rtol=0)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_dropout_key_changes_the_step_and_the_same_key_reproduces_it(num_layers, bidirectional):
  params, batch, _, _ = shared(num_layers, bidirectional)
  model, loss = SPECS[num_layers, bidirectional]
  model = dataclasses.replace(model, dropout=0.3, input_dropout=0.3, state_dropout=0.3)
  step = jaxrnn.make_train_step(SGD, model=model, loss=loss, donate=False)
  state = SGD.init(params)
  run = lambda key: step(params, state, batch, key)
  first, again, other = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
  plain = sgd_step(num_layers, bidirectional)(params, state, batch)
  chex.assert_trees_all_equal(first, again)
  for different in (other, plain):
    differences = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), first[0], different[0])
    assert max(jax.tree.leaves(differences)) > 1e-4
  assert abs(float(first[2]["loss"]) - float(other[2]["loss"])) > 1e-6


def test_fit_gives_step_s_the_dropout_key_fold_in_key_s():
  """``fit(key=k)``'s step ``s`` is ``step(..., fold_in(k, s))`` (its documented rule), in a
  ``range`` that starts later too: with parameters that never change, step ``s``'s loss is that
  of one step with that key, and the three steps' losses (three dropout masks) all differ."""
  params, batch, _, _ = shared(2, True)
  model, loss = SPECS[2, True]
  model = dataclasses.replace(model, dropout=0.3, input_dropout=0.3, state_dropout=0.3)
  frozen = optax.set_to_zero()
  step = jaxrnn.make_train_step(frozen, model=model, loss=loss, donate=False)
  key = jax.random.key(7)
  result = jaxrnn.fit(params, frozen.init(params), step, [batch] * 3, 3, key=key, progress=False)
  alone = [float(step(params, frozen.init(params), batch, jax.random.fold_in(key, s))[2]["loss"])
           for s in range(3)]
  np.testing.assert_array_equal(result.history["loss"], alone)
  assert len(set(alone)) == 3
  resumed = jaxrnn.fit(params, frozen.init(params), step, [batch] * 5, range(1, 3), key=key,
                       progress=False)                  # s is the step's number, not its index
  np.testing.assert_array_equal(resumed.history["loss"], alone[1:])


@pytest.mark.parametrize("loss_name", ["cross_entropy", "squared_error"])
def test_evaluate_under_jit_with_a_target_mask_entry_of_2_is_nan(loss_name):
  """Under jit a mask cannot be refused: every metric is NaN, not a plausible number."""
  params, batch, _ = random_problem(5, 4, 2)
  if loss_name == "squared_error":
    batch = batch._replace(targets=jnp.zeros(batch.xs.shape[:2] + (2,)))
  loss = jaxrnn.LossSpec(loss=loss_name)
  mask = jnp.ones(batch.xs.shape[:2]).at[1, 0].set(2.0)
  metrics = jaxrnn.make_eval_step(loss=loss)(params, batch._replace(target_mask=mask))
  assert all(np.isnan(float(v)) for v in metrics.values()), metrics
  good = jaxrnn.make_eval_step(loss=loss)(params, batch._replace(target_mask=jnp.ones_like(mask)))
  assert all(np.isfinite(float(v)) for v in good.values()), good


def test_evaluate_under_jit_with_a_class_outside_0_O_is_nan():
  """Under jit a class cannot be refused: a class outside [0, O) on a live step makes the loss
  and the accuracy NaN, not a clamped (or missed) class's plausible number."""
  params, batch, _ = random_problem(5, 4, 2)                                    # O = 2
  evaluate = jaxrnn.make_eval_step()
  assert all(np.isfinite(float(v)) for v in evaluate(params, batch).values())
  for bad in (2, -1):
    metrics = evaluate(params, batch._replace(targets=batch.targets.at[1, 0].set(bad)))
    assert set(metrics) == {"loss", "accuracy"}
    assert all(np.isnan(float(v)) for v in metrics.values()), (bad, metrics)


def test_param_max_is_the_largest_magnitude_also_when_it_is_negative():
  params, batch, _ = random_problem(5, 4, 2)
  params = params._replace(W_hy=params.W_hy.at[0, 0].set(-10.0))
  frozen = optax.set_to_zero()
  _, _, metrics = jaxrnn.make_train_step(frozen, donate=False)(params, frozen.init(params), batch)
  check_param_metric(metrics, params)
  assert float(metrics["param_max"]) == 10.0


def test_an_opt_state_of_another_model_or_optimizer_is_named():
  params, batch, _ = random_problem(5, 4, 2)
  step = jaxrnn.make_train_step(optax.adam(1e-2), donate=False)
  other = random_problem(5, 4, 2, sizes=(3, 7, 2)).params
  for opt_state in (optax.adam(1e-2).init(other), optax.sgd(1e-2).init(params)):
    with pytest.raises(ValueError, match="opt_state does not fit params"):
      step(params, opt_state, batch)
  assert np.isfinite(float(step(params, optax.adam(1e-2).init(params), batch)[2]["loss"]))


# --- compiled once --------------------------------------------------------------------------

COMPILES = collections.Counter()


@functools.cache
def count_compiles():
  """Counts compilations (jax.monitoring's backend-compile and persistent-cache-read events),
  from the first call on."""
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **kwargs: COMPILES.update([event]))
  return lambda: sum(COMPILES[event] for event in COMPILE_EVENTS)


def traced(fn, calls):
  """``fn`` that records each trace in ``calls`` and fails (chex) when traced a second time."""
  def traced_fn(*args, **kwargs):
    calls.append(len(calls))
    return fn(*args, **kwargs)
  traced_fn.__name__ = f"traced_{fn.__name__}"        # chex counts per name (and call site)
  return chex.assert_max_traces(traced_fn, n=1)


def test_train_and_eval_steps_compile_once_for_batches_of_one_shape(monkeypatch):
  """Ten steps (with dropout keys) and ten evaluations on new batches of one shape trace and
  compile once (the optimizer's update and the evaluation body are each traced once); a batch
  of another dtype traces again, which the same checks catch. On a mesh: test_parallel."""
  chex.clear_trace_counter()
  compiles = count_compiles()
  params, _, _ = random_problem(3, masked=True)
  batches = [random_problem(10 + i, masked=True).batch for i in range(10)]
  updates = []
  adam = optax.adam(1e-2)
  optimizer = optax.GradientTransformation(adam.init, traced(adam.update, updates))
  step = jaxrnn.make_train_step(optimizer, model=jaxrnn.ModelSpec(dropout=0.2, input_dropout=0.2))
  opt_state = optimizer.init(params)
  params, opt_state, _ = step(params, opt_state, batches[0], jax.random.key(0))   # compiles
  before = compiles()
  losses = []
  for i, batch in enumerate(batches[1:]):
    params, opt_state, metrics = step(params, opt_state, batch, jax.random.key(i + 1))
    losses.append(float(metrics["loss"]))
  assert len(set(losses)) == len(losses) and np.all(np.isfinite(losses))
  assert updates == [0] and compiles() == before, (updates, compiles() - before)
  # evaluation: the jitted evaluate's body
  sums = []
  monkeypatch.setattr(jaxrnn.train, "evaluation_sums",
                      traced(jaxrnn.train.evaluation_sums, sums))
  evaluate = jaxrnn.make_eval_step()
  evaluate(params, batches[0])
  before = compiles()
  results = [float(evaluate(params, batch)["loss"]) for batch in batches[1:]]
  assert len(set(results)) == len(results)                       # new batches, new numbers
  assert sums == [0] and compiles() == before, (sums, compiles() - before)
  # the checks catch a recompile: int32 class targets instead of int64 (same shapes)
  other = batches[0]._replace(targets=batches[0].targets.astype(jnp.int32))
  with pytest.raises(AssertionError, match="traced > 1 times"):
    step(params, opt_state, other, jax.random.key(0))
  with pytest.raises(AssertionError, match="traced > 1 times"):
    evaluate(params, other)
  assert updates == [0] and sums == [0]                          # chex raised before the body


def test_a_step_built_per_call_is_caught_compiling_again():
  """The negative control of the compile-once checks: a step rebuilt for every call (a new
  jax.jit each time) traces and compiles again."""
  chex.clear_trace_counter()
  compiles = count_compiles()
  params, batch, _ = random_problem(4)
  updates = []
  sgd = optax.sgd(0.1)
  optimizer = optax.GradientTransformation(sgd.init, traced(sgd.update, updates))
  jaxrnn.make_train_step(optimizer, donate=False)(params, optimizer.init(params), batch)
  with pytest.raises(AssertionError, match="traced > 1 times"):
    jaxrnn.make_train_step(optimizer, donate=False)(params, optimizer.init(params), batch)
  assert updates == [0]                                          # chex raised before the body
  evaluate = lambda: jaxrnn.make_eval_step()(params, batch)
  evaluate()
  before = compiles()
  evaluate()
  assert compiles() > before


TBPTT_STEP = jaxrnn.make_tbptt_step(optax.adam(0.1))
EAGER_CALLS = {
    "unroll": lambda p, b: jaxrnn.unroll(p, b.xs, lengths=b.lengths).ys,
    "unroll mesh=1": lambda p, b: jaxrnn.unroll(p, b.xs, lengths=b.lengths, mesh=1).ys,
    "unroll_batch_first": lambda p, b: jaxrnn.unroll_batch_first(p, b.xs).ys,
    "sequence_loss": lambda p, b: jaxrnn.sequence_loss(p, b)[0],
    "grad sequence_loss": lambda p, b: jax.grad(jaxrnn.sequence_loss, has_aux=True)(p, b)[0],
    "bptt": lambda p, b: jaxrnn.bptt(p, b)[0],
    "loss_and_grad": lambda p, b: jaxrnn.loss_and_grad(p, b)[1],
    "evaluate": lambda p, b: jaxrnn.evaluate(p, b),
    "infer": lambda p, b: jaxrnn.infer(p, b.xs, lengths=b.lengths)[1],
    "infer mesh=1": lambda p, b: jaxrnn.infer(p, b.xs, mesh=1)[1],
    "split_time": lambda p, b: jaxrnn.split_time(p, b.xs[:, :1], mesh=1).ys,
    "gradient_flow": lambda p, b: jaxrnn.gradient_flow(p, b.xs[:, 0]).norms,
    "gradient_flow start": lambda p, b: jaxrnn.gradient_flow(p, b.xs[:, 0], start=1).log_norms,
    "lyapunov_exponents": lambda p, b: jaxrnn.lyapunov_exponents(p, b.xs[:, 0], k=2),
    "generate": lambda p, b: jaxrnn.generate(p, jax.random.key(0), b.targets[:, 0], 4, 1e-3),
    "tbptt_epoch": lambda p, b: jaxrnn.tbptt_epoch(TBPTT_STEP, p, optax.adam(0.1).init(p),
                                                   jaxrnn.Batch(b.xs, b.targets), 3).params,
}
"""Each public function, called on ``random_problem(seed, sizes=(3, 5, 3))`` (``I = O``)."""


@pytest.mark.parametrize("name", EAGER_CALLS)
@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_a_second_eager_call_on_new_values_of_the_same_shapes_compiles_nothing(
    name, num_layers, bidirectional):
  """Every public function called outside ``jit`` runs one compiled program per shape and specs:
  a second call on other values (other weights and data) compiles nothing, and its result is
  new (0.4.0 traced its ``lax.scan`` bodies afresh and compiled again on every call: 0.1-1.8 s)."""
  if name in ("generate", "tbptt_epoch") and bidirectional:
    pytest.skip("generation and streams read left to right: one direction")
  compiles = count_compiles()
  call = EAGER_CALLS[name]
  problem = functools.partial(random_problem, sizes=(3, 5, 3), num_layers=num_layers,
                              bidirectional=bidirectional)
  first = call(*problem(0)[:2])
  before = compiles()
  second = call(*problem(1)[:2])
  assert compiles() == before, compiles() - before
  assert not np.array_equal(*(np.concatenate([np.ravel(a) for a in jax.tree.leaves(out)])
                              for out in (first, second)))


# --- fit ------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_fit_learns_the_adding_problem_and_is_deterministic(num_layers, bidirectional):
  loss = jaxrnn.LossSpec("squared_error", "mean")
  key = jax.random.key(0)
  params = jaxrnn.init_params(key, 2, 16, 1, init="glorot", num_layers=num_layers,
                              bidirectional=bidirectional)
  optimizer = jaxrnn.make_optimizer("adam", 1e-2, clip_norm=1.0)
  train_step = jaxrnn.make_train_step(optimizer, loss=loss)
  batches = jax.jit(lambda step: data.adding_problem(jax.random.fold_in(key, step), 32, 8))
  seen, at_20 = [], []

  def callback(step, p, state, metrics):
    seen.append((step, metrics["loss"]))
    if step == 19:                   # copies: the step donates what the callback is shown
      at_20.append(jax.tree.map(np.array, (p, state)))

  run = lambda steps, start=(params, optimizer.init(params)), callback=None: jaxrnn.fit(
      *start, train_step, batches, steps, progress=False, callback=callback)
  result = run(150, callback=callback)
  metrics = jaxrnn.make_eval_step(loss=loss)(
      result.params, data.adding_problem(jax.random.key(99), 200, 8))
  assert float(metrics["mse"]) < 0.1                      # predicting the mean scores ~0.167
  assert result.history["loss"][-10:].mean() < 0.1 * result.history["loss"][0]
  assert set(result.history) == {"loss", "grad_norm", "param_max"}
  assert all(v.shape == (150,) for v in result.history.values())
  assert [s for s, _ in seen] == list(range(150))
  np.testing.assert_array_equal([v for _, v in seen], result.history["loss"])
  again = run(20)                                          # the same 20 steps, bit for bit
  chex.assert_trees_all_equal((again.params, again.opt_state), at_20[0])
  np.testing.assert_array_equal(again.history["loss"], result.history["loss"][:20])
  assert all(not leaf.is_deleted() for leaf in jax.tree.leaves(params))  # fit copies
  resumed = run(range(20, 40), start=at_20[0])             # steps 20..39 from step 20's state
  np.testing.assert_array_equal(resumed.history["loss"], result.history["loss"][20:40])


def test_fit_takes_a_sequence_of_batches():
  params, batch, _, _ = shared(1, False)
  batches = [batch._replace(xs=batch.xs * (1 + 0.1 * i)) for i in range(4)]
  step = sgd_step(1, False)
  run = lambda batches, steps=4: jaxrnn.fit(params, SGD.init(params), step, batches, steps,
                                            progress=False)
  from_list, from_tuple, from_function = run(batches), run(tuple(batches)), run(batches.__getitem__)
  chex.assert_trees_all_equal(from_list.params, from_function.params, from_tuple.params)
  np.testing.assert_array_equal(from_list.history["loss"], from_function.history["loss"])
  assert len(set(from_list.history["loss"])) == 4                # each step its own batch
  with pytest.raises(ValueError, match="4 batches, but steps run to 5"):
    run(batches, 5)
  with pytest.raises(TypeError, match="batches"):
    run(iter(batches))


def test_fit_resumes_a_sequence_at_the_step_it_names():
  """``range(start, stop)`` with a sequence uses ``batches[start:stop]``."""
  params, batch, _, _ = shared(1, False)
  batches = [batch._replace(xs=batch.xs * (1 + 0.1 * i)) for i in range(4)]
  step = sgd_step(1, False)
  late = jaxrnn.fit(params, SGD.init(params), step, batches, range(2, 4), progress=False)
  direct = jaxrnn.fit(params, SGD.init(params), step, batches[2:], 2, progress=False)
  chex.assert_trees_all_equal(late.params, direct.params)
  np.testing.assert_array_equal(late.history["loss"], direct.history["loss"])


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
  bad = good._replace(xs=good.xs * jnp.nan)
  called = []
  with pytest.raises(FloatingPointError, match=r"step 13\b") as error:
    jaxrnn.fit(params, SGD.init(params), sgd_step(num_layers, bidirectional),
               lambda step: bad if step == 13 else good,
               range(10, 16), progress=False, callback=lambda step, *_: called.append(step))
  assert called == [10, 11, 12]
  assert "'loss': nan" in str(error.value)


@pytest.mark.parametrize("num_layers,bidirectional,optimizer,bad_step", [
    (1, False, nan_at(2), 2), (2, True, nan_at(2), 2), (1, False, optax.sgd(float("inf")), 0)],
    ids=["nan-update-1", "nan-update-2bi", "infinite-lr-1"])
def test_fit_stops_when_the_update_makes_params_non_finite(num_layers, bidirectional, optimizer,
                                                            bad_step):
  params, batch, _, _ = shared(num_layers, bidirectional)
  model, loss = SPECS[num_layers, bidirectional]
  step = jaxrnn.make_train_step(optimizer, model=model, loss=loss)
  called, finite = [], []

  def callback(step, p, state, metrics):
    called.append(step)
    finite.append(all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(p)))

  with pytest.raises(FloatingPointError, match=rf"step {bad_step}\b") as error:
    jaxrnn.fit(params, optimizer.init(params), step, [batch] * 5, 5, progress=False,
               callback=callback)
  assert called == list(range(bad_step)) and all(finite)
  message = str(error.value)
  assert "'param_max': nan" in message or "'param_max': inf" in message, message
  assert "'loss': nan" not in message                            # the loss itself was finite


def overflowing_gradient_problem():
  """A ReLU model whose loss (1e300) and params are finite but whose ``dL/dW_hy`` overflows.

  ``h = relu(x) = 1e250``, ``y = 1e-100 h = 1e150``, ``L = y^2 = 1e300``,
  ``dL/dW_hy = 2 y h = 2e400 = inf``.
  """
  one = lambda *shape: jnp.ones(shape, jnp.float64)
  params = jaxrnn.RNNParams(((jaxrnn.CellParams(one(1, 1), 0 * one(1, 1), 0 * one(1)),),),
                            1e-100 * one(1, 1), 0 * one(1))
  huge = jaxrnn.Batch(1e250 * one(1, 1, 1), 0 * one(1, 1, 1))
  return params, huge, huge._replace(xs=one(1, 1, 1))


def test_fit_stops_when_the_gradient_is_non_finite_though_loss_and_params_are_finite():
  params, huge, small = overflowing_gradient_problem()
  model, loss = jaxrnn.ModelSpec(activation="relu"), jaxrnn.LossSpec("squared_error")
  value, grads = jaxrnn.loss_and_grad(params, huge, model=model, loss=loss)
  assert np.isfinite(float(value)) and float(grads.W_hy[0, 0]) == np.inf
  optimizer = optax.set_to_zero()                # params never move: only the gradient is bad
  step = jaxrnn.make_train_step(optimizer, model=model, loss=loss)
  called = []
  with pytest.raises(FloatingPointError, match=r"step 2\b") as error:
    jaxrnn.fit(params, optimizer.init(params), step, [small, small, huge, small], 4,
               progress=False, callback=lambda step, *_: called.append(step))
  assert called == [0, 1]
  message = str(error.value)
  assert "'grad_norm': inf" in message and "'param_max': 1.0" in message, message
  assert "'loss': nan" not in message and "'loss': inf" not in message, message


@pytest.mark.parametrize("steps", [-3, 2.0, True, range(0, 6, 2), range(-1, 3), "3"])
def test_fit_rejects_a_bad_number_of_steps(steps):
  params, batch, _, _ = shared(1, False)
  with pytest.raises(ValueError, match="steps"):
    jaxrnn.fit(params, SGD.init(params), sgd_step(1, False), lambda step: batch, steps,
               progress=False)


def test_fit_with_zero_steps_returns_the_params():
  params, batch, _, _ = shared(1, False)
  state = SGD.init(params)
  result = jaxrnn.fit(params, state, sgd_step(1, False), lambda step: batch, 0, progress=False)
  chex.assert_trees_all_equal(result.params, params)
  assert result.history["loss"].shape == (0,)


class FakeClock:
  """tqdm's clock, moved on only by the train step: 100 s for the first (compiling) call, 1 s
  for every later one."""

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_fit_progress_bar_leaves_the_compiling_step_out(monkeypatch):
  """With ``progress=True`` the bar counts every step (6/6 at the end) but times only steps
  2.., so its rate (and the sequences/s shown) is the steady one, 1 step per (fake) second, not
  dragged down by the first step's 100 s compile."""
  params, batch, _, _ = shared(1, False)
  step = sgd_step(1, False)
  clock, bars, calls, shown = FakeClock(), [], [], []
  monkeypatch.setattr(tqdm.std, "time", clock)               # the clock tqdm reads

  class Bar(tqdm.std.tqdm):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      bars.append((self, kwargs))

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
      shown.append(dict(self.format_dict, shown=dict(ordered_dict or {}, **kwargs)))
      super().set_postfix(ordered_dict, refresh, **kwargs)

  monkeypatch.setattr(jaxrnn.train, "tqdm", Bar)

  def slow_first_step(*args):
    clock.now += 100.0 if not calls else 1.0
    calls.append(clock.now)
    return step(*args)

  num_steps, size = 6, batch.xs.shape[1]
  jaxrnn.fit(params, SGD.init(params), slow_first_step, [batch] * num_steps, num_steps)
  ((bar, kwargs),) = bars
  assert kwargs["disable"] is False and len(calls) == len(shown) == num_steps
  last = shown[-1]
  assert bar.n == last["n"] == last["total"] == num_steps        # every step is counted,
  assert last["elapsed"] == num_steps - 1                        # the compiling one not timed
  assert last["rate"] == pytest.approx(1.0)
  assert last["shown"]["seq/s"] == f"{size}"                     # B sequences per step per second
  assert [entry["total"] for entry in shown] == [num_steps] * num_steps
  bars.clear()
  jaxrnn.fit(params, SGD.init(params), step, [batch], 1, progress=False)
  assert bars[0][1]["disable"] is True
