"""jaxrnn.sequence_loss: every loss/output pair against NumPy, masks and reductions,
checkpointing (chunked remat) equal to the plain loss, mixed precision, argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from conftest import random_params, random_problem
from test_unroll import NP_OUT, assert_rel_close, numpy_unroll

T, B = 7, 4
STATIC = ("model", "loss", "compute")
loss_fn = jax.jit(jaxrnn.sequence_loss, static_argnames=STATIC)


def value_and_grad(params, batch, h0, model=jaxrnn.ModelSpec(), loss=jaxrnn.LossSpec(),
                   compute=jaxrnn.ComputeSpec(), key=None):
  """``((L, final), (dL/dparams, dL/dh0))``."""
  fn = lambda p, h: jaxrnn.sequence_loss(p, batch, h, model=model, loss=loss, compute=compute,
                                         key=key)
  return jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(params, h0)


value_and_grad = jax.jit(value_and_grad, static_argnames=STATIC)


def numpy_loss(prob, model, loss):
  """``sum_t w_t L_t`` from the NumPy forward loop: ``w`` = live steps x target mask."""
  batch = prob.batch
  hs, _, final = numpy_unroll(prob.params, batch.xs, prob.h0, batch.lengths, model.activation)
  z = hs @ np.asarray(prob.params.W_hy).T + np.asarray(prob.params.b_y)          # [T, B, O]
  num_steps, size = z.shape[:2]
  w = np.ones((num_steps, size))
  if batch.lengths is not None:
    w *= np.arange(num_steps)[:, None] < np.asarray(batch.lengths)[None]
  if batch.target_mask is not None:
    w *= np.asarray(batch.target_mask)
  if loss.loss == "cross_entropy":
    log_probs = z - z.max(-1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
    per_step = -np.take_along_axis(log_probs, np.asarray(batch.targets)[..., None], -1)[..., 0]
  else:
    y = NP_OUT[model.output_activation](z)
    per_step = np.sum((y - np.asarray(batch.targets)) ** 2, -1)
  total = np.sum(w * per_step)
  if loss.reduction == "mean":
    total = total / max(w.sum(), 1)
  return total, final


LOSS_CASES = [
    (1, False, "tanh", "cross_entropy", "identity", "sum"),
    (1, False, "relu", "cross_entropy", "softmax", "mean"),
    (1, False, "tanh", "squared_error", "identity", "mean"),
    (1, False, "relu", "squared_error", "sigmoid", "sum"),
    (1, False, "tanh", "squared_error", "tanh", "sum"),
    (1, False, "tanh", "squared_error", "softmax", "mean"),
    (2, True, "relu", "cross_entropy", "identity", "mean"),
    (2, True, "tanh", "squared_error", "softmax", "sum"),
]


@pytest.mark.parametrize(
    "num_layers,bidirectional,activation,loss,output_activation,reduction,masked",
    [case + (True,) for case in LOSS_CASES] + [LOSS_CASES[0] + (False,), LOSS_CASES[7] + (False,)])
def test_loss_matches_numpy(num_layers, bidirectional, activation, loss, output_activation,
                            reduction, masked):
  prob = random_problem(11 + num_layers, T, B, num_layers=num_layers, bidirectional=bidirectional,
                        loss=loss, masked=masked)
  model = jaxrnn.ModelSpec(activation=activation, output_activation=output_activation)
  spec = jaxrnn.LossSpec(loss, reduction)
  got, final = loss_fn(prob.params, prob.batch, prob.h0, model=model, loss=spec)
  want, want_final = numpy_loss(prob, model, spec)
  assert got.dtype == jnp.float64 and got.shape == ()
  np.testing.assert_allclose(float(got), want, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(final), want_final, rtol=1e-12, atol=1e-13)
  assert want > 1e-3


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_all_masked_mean_is_zero_not_nan(num_layers, bidirectional):
  case = next(c for c in LOSS_CASES if c[:2] == (num_layers, bidirectional) and c[5] == "mean")
  _, _, activation, loss, output_activation, reduction = case
  prob = random_problem(3, T, B, num_layers=num_layers, bidirectional=bidirectional, loss=loss,
                        masked=True)
  batch = prob.batch._replace(lengths=jnp.zeros(B, prob.batch.lengths.dtype))
  model = jaxrnn.ModelSpec(activation=activation, output_activation=output_activation)
  got, final = loss_fn(prob.params, batch, prob.h0, model=model,
                       loss=jaxrnn.LossSpec(loss, reduction))
  assert float(got) == 0.0
  np.testing.assert_array_equal(final, prob.h0)


def test_target_outside_mask_is_ignored():
  """A class index out of range on a masked-out step neither raises nor poisons the loss."""
  prob = random_problem(4, T, B, loss="cross_entropy", masked=True)
  batch = prob.batch
  dead = (np.arange(T)[:, None] >= np.asarray(batch.lengths)[None]) | ~np.asarray(
      batch.target_mask)
  assert dead.any()
  bad = batch._replace(targets=jnp.where(jnp.asarray(dead), 99, batch.targets))
  model = jaxrnn.ModelSpec(activation="tanh", output_activation="identity")
  spec = jaxrnn.LossSpec("cross_entropy", "sum")
  np.testing.assert_allclose(loss_fn(prob.params, bad, prob.h0, model=model, loss=spec)[0],
                             numpy_loss(prob, model, spec)[0], rtol=1e-12)


CHECKPOINT_CASES = [(1, 1, "fused"), (1, 3, "autodiff"), (2, 3, "fused"), (2, 10, "autodiff")]


@pytest.mark.parametrize("num_layers,chunk,gradient", CHECKPOINT_CASES)
def test_checkpointed_loss_gradient_and_final_equal_plain(num_layers, chunk, gradient):
  """Loss, gradient (params and h0) and final state; chunk 3 pads T=7, chunk 10 exceeds T."""
  prob = random_problem(20 + chunk, T, B, num_layers=num_layers, masked=True)
  model = jaxrnn.ModelSpec(activation="tanh", output_activation="softmax")
  spec = jaxrnn.LossSpec("cross_entropy", "mean")
  plain = value_and_grad(prob.params, prob.batch, prob.h0, model, spec,
                         jaxrnn.ComputeSpec(gradient=gradient))
  chunked = value_and_grad(prob.params, prob.batch, prob.h0, model, spec,
                           jaxrnn.ComputeSpec(gradient=gradient, checkpoint_every=chunk))
  assert_rel_close(chunked, plain, 1e-10)
  np.testing.assert_allclose(plain[0][1], numpy_loss(prob, model, spec)[1], rtol=1e-12,
                             atol=1e-13)
  assert np.max(np.abs(np.asarray(plain[1][0].layers[-1][0].W_hh))) > 1e-4


def test_checkpointed_squared_error_float32_no_lengths():
  prob = random_problem(5, T, B, num_layers=2, loss="squared_error", dtype=jnp.float32)
  model = jaxrnn.ModelSpec(activation="relu", output_activation="tanh")
  spec = jaxrnn.LossSpec("squared_error", "sum")
  plain = value_and_grad(prob.params, prob.batch, prob.h0, model, spec)
  chunked = value_and_grad(prob.params, prob.batch, prob.h0, model, spec,
                           jaxrnn.ComputeSpec(checkpoint_every=2))
  assert_rel_close(chunked, plain, 1e-5)


def test_checkpoint_every_rejects_bidirectional_and_bad_chunks():
  prob = random_problem(6, T, B, num_layers=2, bidirectional=True)
  with pytest.raises(ValueError, match="compute.checkpoint_every"):
    jaxrnn.sequence_loss(prob.params, prob.batch, compute=jaxrnn.ComputeSpec(checkpoint_every=2))
  one = random_problem(6, T, B)
  for bad in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match="compute.checkpoint_every"):
      jaxrnn.sequence_loss(one.params, one.batch,
                           compute=jaxrnn.ComputeSpec(checkpoint_every=bad))


def test_checkpointing_lowers_compiled_memory():
  """XLA's compiled temp memory of a gradient step: checkpointed well below storing every h_t."""
  num_steps, batch, hidden = 1024, 8, 64
  params = random_params(0, (4, hidden, 4), num_layers=1, dtype=jnp.float32)
  data = jaxrnn.Batch(jnp.zeros((num_steps, batch, 4), jnp.float32),
                      jnp.zeros((num_steps, batch), jnp.int32))

  def temp_bytes(compute):
    step = jax.jit(jax.grad(lambda p, b: jaxrnn.sequence_loss(p, b, compute=compute)[0]))
    return step.lower(params, data).compile().memory_analysis().temp_size_in_bytes

  hs_bytes = num_steps * batch * hidden * 4
  scan = jaxrnn.ComputeSpec(recurrence="scan")          # XLA's buffers (a GPU's kernel is opaque)
  plain, chunked = temp_bytes(scan), temp_bytes(scan._replace(checkpoint_every=32))
  assert plain >= hs_bytes                 # measured: 8.65 MB plain, 0.44 MB chunked (k = 32)
  assert chunked < hs_bytes / 4


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_bfloat16_compute_is_close_to_float32(num_layers, bidirectional):
  prob = random_problem(7, 16, 8, sizes=(4, 16, 3), num_layers=num_layers,
                        bidirectional=bidirectional, masked=True, dtype=jnp.float32)
  model, spec = jaxrnn.ModelSpec(), jaxrnn.LossSpec(reduction="mean")
  (loss32, final32), grads32 = value_and_grad(prob.params, prob.batch, prob.h0, model, spec)
  (loss16, final16), grads16 = value_and_grad(prob.params, prob.batch, prob.h0, model, spec,
                                              jaxrnn.ComputeSpec(dtype=jnp.bfloat16))
  assert loss16.dtype == final16.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  loss_diff = float(abs(loss16 - loss32) / abs(loss32))
  assert 0 < loss_diff <= 1e-2
  grad_diff = max(float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
                  for a, b in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)))
  assert grad_diff <= 5e-2
  assert float(jnp.max(jnp.abs(final16 - final32))) < 5e-2


def test_bad_arguments_name_the_argument():
  prob = random_problem(8, T, B, num_layers=2, bidirectional=True, masked=True)
  params, batch = prob.params, prob.batch
  ce = jaxrnn.LossSpec("cross_entropy")
  se = jaxrnn.LossSpec("squared_error")
  with pytest.raises(ValueError, match="batch.targets"):
    jaxrnn.sequence_loss(params, batch._replace(targets=batch.targets.at[0].set(2)),
                         loss=ce, h0=None)
  with pytest.raises(ValueError, match="batch.targets"):
    jaxrnn.sequence_loss(params, batch._replace(targets=batch.targets[:3]))
  with pytest.raises(TypeError, match="targets"):
    jaxrnn.sequence_loss(params, batch._replace(targets=batch.targets.astype(jnp.float64)))
  with pytest.raises(ValueError, match="batch.targets"):
    jaxrnn.sequence_loss(params, batch, loss=se)                      # [T, B] is not [T, B, O]
  with pytest.raises(TypeError, match="batch.targets"):
    jaxrnn.sequence_loss(params, batch._replace(targets=None))
  with pytest.raises(ValueError, match="batch.target_mask"):
    jaxrnn.sequence_loss(params, batch._replace(target_mask=batch.target_mask * 2))
  with pytest.raises(ValueError, match="batch.target_mask"):
    jaxrnn.sequence_loss(params, batch._replace(target_mask=batch.target_mask[:, :2]))
  with pytest.raises(ValueError, match="lengths"):
    jaxrnn.sequence_loss(params, batch._replace(lengths=batch.lengths + T + 1))
  with pytest.raises(ValueError, match="batch.xs"):
    jaxrnn.sequence_loss(params, batch._replace(xs=batch.xs[..., :1]))
  with pytest.raises(TypeError, match="batch"):
    jaxrnn.sequence_loss(params, tuple(batch))
  with pytest.raises(ValueError, match="h0"):
    jaxrnn.sequence_loss(params, batch, prob.h0[:1])
  with pytest.raises(ValueError, match="model.output_activation"):
    jaxrnn.sequence_loss(params, batch, model=jaxrnn.ModelSpec(output_activation="sigmoid"),
                         loss=ce)
  with pytest.raises(ValueError, match="loss.reduction"):
    jaxrnn.sequence_loss(params, batch, loss=jaxrnn.LossSpec(reduction="max"))
  with pytest.raises(ValueError, match="loss.loss"):
    jaxrnn.sequence_loss(params, batch, loss=jaxrnn.LossSpec(loss="hinge"))
  with pytest.raises(TypeError, match="loss"):
    jaxrnn.sequence_loss(params, batch, loss="cross_entropy")
  with pytest.raises(TypeError, match="compute"):
    jaxrnn.sequence_loss(params, batch, compute={"gradient": "fused"})


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_empty_sequences_give_zero_loss_zero_gradients_and_h0_as_final(num_layers, bidirectional):
  prob = random_problem(3, 0, 4, num_layers=num_layers, bidirectional=bidirectional)
  for gradient in ("fused", "autodiff"):
    (value, final), grads = jax.value_and_grad(jaxrnn.sequence_loss, has_aux=True)(
        prob.params, prob.batch, prob.h0, compute=jaxrnn.ComputeSpec(gradient=gradient))
    assert float(value) == 0 and all(not np.any(g) for g in jax.tree.leaves(grads))
    np.testing.assert_array_equal(final, prob.h0)
  hand, dh0 = jaxrnn.bptt(prob.params, prob.batch, prob.h0)
  assert all(not np.any(g) for g in jax.tree.leaves(hand)) and not np.any(dh0)


def test_under_jit_a_length_outside_0_T_gives_nan_not_a_clamped_loss():
  prob = random_problem(4, 6, 3, num_layers=2)
  loss = jax.jit(lambda lengths: jaxrnn.sequence_loss(
      prob.params, prob.batch._replace(lengths=lengths))[0])
  assert np.isfinite(loss(jnp.array([6, 2, 0])))
  assert np.isnan(loss(jnp.array([7, 2, 0]))) and np.isnan(loss(jnp.array([6, -1, 0])))
  ys = jax.jit(lambda lengths: jaxrnn.unroll(prob.params, prob.batch.xs, lengths=lengths).ys)(
      jnp.array([7, 2, 0]))
  assert np.all(np.isnan(ys[:, 0])) and not np.any(np.isnan(ys[:, 1:]))
