"""optax training: the three gradients step alike, clipping, learning, NaN handling."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
from jaxrnn import data


def class_batch(seed=0, num_steps=7, batch=4, dtype=jnp.float64):
  keys = jax.random.split(jax.random.key(seed), 2)
  return jaxrnn.Batch(xs=jax.random.normal(keys[0], (num_steps, batch, 3), dtype),
                      targets=jax.random.randint(keys[1], (num_steps, batch), 0, 2),
                      lengths=jnp.array([7, 5, 1, 0]))


def test_fused_autodiff_and_hand_bptt_steps_agree():
  params = jaxrnn.init_params(jax.random.key(1), 3, 6, 2, scheme="glorot")
  optimizer = jaxrnn.make_optimizer("sgd", 0.1, clip_norm=10.0)
  spec = jaxrnn.LossSpec(activation="relu")
  results = {}
  for gradient in jaxrnn.GRADIENTS:
    step = jaxrnn.make_train_step(optimizer, spec, gradient, donate=False)
    new_params, _, metrics = step(params, optimizer.init(params), class_batch())
    results[gradient] = (new_params, metrics)
  for gradient in ("autodiff", "bptt"):
    chex.assert_trees_all_close(results[gradient], results["fused"], rtol=1e-10, atol=1e-13)
  assert not np.allclose(results["fused"][0].W_hh, params.W_hh)


def test_gradient_clipping_bounds_the_update():
  params = jaxrnn.init_params(jax.random.key(1), 3, 6, 2, scheme="glorot")
  optimizer = jaxrnn.make_optimizer("sgd", 1.0, clip_norm=1e-3)
  step = jaxrnn.make_train_step(optimizer, jaxrnn.LossSpec(reduction="sum"), donate=False)
  new_params, _, metrics = step(params, optimizer.init(params), class_batch())
  assert float(metrics["grad_norm"]) > 1.0                 # clipping was needed
  change = optax.tree.norm(jax.tree.map(jnp.subtract, new_params, params))
  np.testing.assert_allclose(float(change), 1e-3, rtol=1e-9)


def test_any_optax_transformation_and_donation():
  params = jaxrnn.init_params(jax.random.key(1), 3, 6, 2, dtype=jnp.float32)
  optimizer = optax.chain(optax.clip(0.5), optax.lion(1e-3))
  step = jaxrnn.make_train_step(optimizer)
  batch = class_batch(dtype=jnp.float32)
  opt_state = optimizer.init(params)
  old = params.W_hh
  new_params, _, _ = step(params, opt_state, batch)
  assert old.is_deleted()                                  # buffers were donated
  assert new_params.W_hh.dtype == jnp.float32


def test_fit_learns_the_adding_problem_and_is_deterministic():
  spec = jaxrnn.LossSpec(loss="squared_error", activation="relu", output_activation="identity")
  key = jax.random.key(0)

  def run():
    params = jaxrnn.init_params(key, 2, 32, 1, scheme="identity", dtype=jnp.float32)
    return jaxrnn.fit(params, jaxrnn.make_optimizer("adam", 3e-3, clip_norm=1.0),
                      lambda step: data.adding_problem(jax.random.fold_in(key, step), 64, 10,
                                                       jnp.float32),
                      num_steps=300, spec=spec, progress=False)

  result = run()
  metrics = jaxrnn.evaluate(result.params, data.adding_problem(jax.random.key(9), 2000, 10,
                                                               jnp.float32), spec)
  assert float(metrics["mse"]) < 0.02                      # predicting 1.0 scores ~0.167
  assert result.history["loss"].shape == (300,)
  chex.assert_trees_all_equal(run().params, result.params)


def test_fit_stops_on_a_non_finite_loss_naming_the_step():
  params = jaxrnn.init_params(jax.random.key(0), 3, 4, 2, dtype=jnp.float32)
  good = class_batch(dtype=jnp.float32)
  bad = good._replace(xs=good.xs.at[0, 0, 0].set(jnp.nan))
  with pytest.raises(FloatingPointError, match="step 3"):
    jaxrnn.fit(params, optax.sgd(0.1), lambda step: bad if step == 3 else good, num_steps=5,
               progress=False)


def test_evaluate_accuracy_counts_live_steps():
  params = jaxrnn.init_params(jax.random.key(2), 3, 6, 2, scheme="glorot")
  batch = class_batch()
  metrics = jaxrnn.make_eval_step()(params, batch)
  _, ys = jaxrnn.unroll(params, batch.xs, lengths=batch.lengths)
  live = np.arange(7)[:, None] < np.asarray(batch.lengths)[None]
  hits = np.asarray(jnp.argmax(ys, -1) == batch.targets)
  np.testing.assert_allclose(metrics["accuracy"], hits[live].mean(), rtol=1e-12)
  np.testing.assert_allclose(metrics["loss"], jaxrnn.sequence_loss(
      params, batch.xs, batch.targets, lengths=batch.lengths, reduction="mean"), rtol=1e-12)
