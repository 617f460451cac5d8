"""jaxrnn.sequence_loss: every loss/output pair against the NumPy reference (jitted and not), masks
and reductions, NaN under jit for values it cannot check, checkpointing (chunked remat) equal to
the plain loss, mixed precision, argument checks."""

import dataclasses
import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import jaxrnn
import reference
from conftest import MODELS, random_params, random_problem

T, B = 7, 4
STATIC = ("model", "loss", "compute")
loss_fn = jax.jit(jaxrnn.sequence_loss, static_argnames=STATIC)


@functools.partial(jax.jit, static_argnames=STATIC)
def value_and_grad(params, batch, h0, model=jaxrnn.ModelSpec(), loss=jaxrnn.LossSpec(),
                   compute=jaxrnn.ComputeSpec()):
  """``((L, final), (dL/dparams, dL/dh0))``."""
  fn = lambda p, h: jaxrnn.sequence_loss(p, batch, h, model=model, loss=loss, compute=compute)
  return jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(params, h0)


def reference_loss(prob, model, loss, batch=None):
  """``(L, final)`` of the NumPy reference for ``prob`` (or ``batch``) under the specs."""
  batch = prob.batch if batch is None else batch
  return reference.loss(reference.as_numpy(prob.params), batch.xs, batch.targets, prob.h0,
                        batch.lengths, batch.target_mask, model.activation,
                        model.output_activation, loss.loss, loss.reduction)


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


class TestLossVariants(chex.TestCase):
  """jaxrnn.sequence_loss jitted and not (chex variants)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*[case + (True,) for case in LOSS_CASES],
                            LOSS_CASES[0] + (False,), LOSS_CASES[7] + (False,))
  def test_loss_matches_reference(self, num_layers, bidirectional, activation, loss,
                                  output_activation, reduction, masked):
    prob = random_problem(11 + num_layers, T, B, num_layers=num_layers,
                          bidirectional=bidirectional, loss=loss, masked=masked)
    model = jaxrnn.ModelSpec(activation=activation, output_activation=output_activation)
    spec = jaxrnn.LossSpec(loss, reduction)
    run = self.variant(functools.partial(jaxrnn.sequence_loss, model=model, loss=spec))
    got, final = run(prob.params, prob.batch, prob.h0)
    want, want_final = reference_loss(prob, model, spec)
    chex.assert_shape(got, ())
    assert got.dtype == jnp.float64
    chex.assert_trees_all_close((got, final), (np.float64(want), want_final), rtol=1e-12,
                                atol=1e-13, strict=True)
    assert want > 1e-3

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODELS)
  def test_a_class_outside_0_O_raises_eagerly_and_is_nan_under_jit(self, num_layers,
                                                                   bidirectional):
    """On a live step a class index outside [0, O) raises; under jit, where it cannot be
    checked, the loss is NaN (not a clamped class), and so is every parameter's gradient, as
    bptt's (a NaN loss with a finite gradient would still train). On a dead step it is ignored
    either way, gradient included."""
    prob = random_problem(4, T, B, num_layers=num_layers, bidirectional=bidirectional,
                          masked=True)
    batch = prob.batch
    live = (np.arange(T)[:, None] < np.asarray(batch.lengths)[None]) & np.asarray(
        batch.target_mask)
    assert live.any() and not live.all()
    t, b = np.argwhere(live)[0]
    model, spec = jaxrnn.ModelSpec(), jaxrnn.LossSpec("cross_entropy", "mean")
    run = self.variant(functools.partial(jaxrnn.sequence_loss, model=model, loss=spec))
    grad = self.variant(jax.grad(lambda *args: run(*args)[0]))
    for bad in (2, 5, -1):                                             # O = 2
      bad_batch = batch._replace(targets=batch.targets.at[t, b].set(bad))
      if self.variant.type == chex.ChexVariantType.WITHOUT_JIT:
        with pytest.raises(ValueError, match="batch.targets"):
          run(prob.params, bad_batch, prob.h0)
      else:
        assert np.isnan(run(prob.params, bad_batch, prob.h0)[0]), bad
        for grads in (grad(prob.params, bad_batch, prob.h0),
                      jax.jit(functools.partial(jaxrnn.bptt, model=model, loss=spec))(
                          prob.params, bad_batch, prob.h0)[0]):
          assert all(np.isnan(leaf).any() for leaf in jax.tree.leaves(grads)), bad
    dead = batch._replace(targets=jnp.where(jnp.asarray(live), batch.targets, 99))
    chex.assert_trees_all_close(run(prob.params, dead, prob.h0)[0],
                                np.float64(reference_loss(prob, model, spec)[0]),
                                rtol=1e-12, strict=True)
    chex.assert_trees_all_close(grad(prob.params, dead, prob.h0),
                                grad(prob.params, batch, prob.h0), rtol=1e-12)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(("sum", 0.5), ("sum", -1.0), ("sum", 2.0), ("mean", 0.5),
                            ("mean", 2.0))
  def test_a_target_mask_entry_not_0_or_1_raises_eagerly_and_is_nan_under_jit(self, reduction,
                                                                               value):
    prob = random_problem(5, T, B, masked=True)
    mask = np.asarray(prob.batch.target_mask, np.float64)
    live = np.arange(T)[:, None] < np.asarray(prob.batch.lengths)[None]
    t, b = np.argwhere(live)[0]
    mask[t, b] = value
    batch = prob.batch._replace(target_mask=jnp.asarray(mask))
    spec = jaxrnn.LossSpec(reduction=reduction)
    run = self.variant(functools.partial(jaxrnn.sequence_loss, loss=spec))
    if self.variant.type == chex.ChexVariantType.WITHOUT_JIT:
      with pytest.raises(ValueError, match="batch.target_mask"):
        run(prob.params, batch, prob.h0)
      return
    assert np.isnan(run(prob.params, batch, prob.h0)[0])
    mask[t, b] = 1.0                                       # a float 0/1 mask is a mask
    chex.assert_trees_all_close(
        run(prob.params, prob.batch._replace(target_mask=jnp.asarray(mask)), prob.h0)[0],
        np.float64(reference_loss(prob, jaxrnn.ModelSpec(), spec,
                                  prob.batch._replace(target_mask=mask))[0]),
        rtol=1e-12, strict=True)


def test_the_defaults_are_the_seeds_loss_summed_over_steps_and_sequences():
  """With no specs and no h0: tanh, an identity read-out and ``L = sum_t sum_b L_t`` of the
  cross-entropy from zero states, the NumPy reference's seed equations."""
  prob = random_problem(21)
  got, final = loss_fn(prob.params, prob.batch)
  want, want_final = reference.loss(reference.as_numpy(prob.params), prob.batch.xs,
                                    prob.batch.targets, None, None, None, "tanh", "identity",
                                    "cross_entropy", "sum")
  chex.assert_trees_all_close((got, final), (np.float64(want), want_final), rtol=1e-12)
  mean, _ = loss_fn(prob.params, prob.batch, loss=jaxrnn.LossSpec(reduction="mean"))
  np.testing.assert_allclose(float(got), prob.batch.targets.size * float(mean), rtol=1e-12)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
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
  chex.assert_trees_all_equal(final, prob.h0)


def test_under_jit_a_length_outside_0_T_gives_nan_not_a_clamped_loss():
  prob = random_problem(4, 6, 3, num_layers=2)
  loss = jax.jit(lambda lengths: jaxrnn.sequence_loss(
      prob.params, prob.batch._replace(lengths=lengths))[0])
  assert np.isfinite(loss(jnp.array([6, 2, 0])))
  assert np.isnan(loss(jnp.array([7, 2, 0]))) and np.isnan(loss(jnp.array([6, -1, 0])))


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
  chex.assert_trees_all_close(chunked, plain, rtol=1e-10, atol=1e-12, strict=True)
  want, want_final = reference_loss(prob, model, spec)
  chex.assert_trees_all_close(plain[0], (np.float64(want), want_final), rtol=1e-12, atol=1e-13,
                              strict=True)
  assert np.max(np.abs(np.asarray(plain[1][0].layers[-1][0].W_hh))) > 1e-4


def test_checkpointed_squared_error_float32_no_lengths():
  prob = random_problem(5, T, B, num_layers=2, loss="squared_error", dtype=jnp.float32)
  model = jaxrnn.ModelSpec(activation="relu", output_activation="tanh")
  spec = jaxrnn.LossSpec("squared_error", "sum")
  plain = value_and_grad(prob.params, prob.batch, prob.h0, model, spec)
  chunked = value_and_grad(prob.params, prob.batch, prob.h0, model, spec,
                           jaxrnn.ComputeSpec(checkpoint_every=2))
  chex.assert_trees_all_close(chunked, plain, rtol=1e-5, atol=1e-5, strict=True)


def test_checkpoint_every_rejects_bidirectional_and_bad_chunks():
  prob = random_problem(6, T, B, num_layers=2, bidirectional=True)
  with pytest.raises(ValueError, match="compute.checkpoint_every"):
    jaxrnn.sequence_loss(prob.params, prob.batch, compute=jaxrnn.ComputeSpec(checkpoint_every=2))
  for bad in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match="compute.checkpoint_every"):
      jaxrnn.ComputeSpec(checkpoint_every=bad)


UNI, BI = jaxrnn.pytrees.Shape(3, 8, 2, 2, 1), jaxrnn.pytrees.Shape(3, 8, 2, 2, 2)


def test_auto_checkpointing_rule():
  """``"auto"``: every state stored for a short sequence, ``k = ceil(sqrt(T))`` past
  ``FUSED_STEPS_LIMIT`` (512), never chunks a bidirectional model or the bptt oracle; an int or None is kept."""
  resolve = jaxrnn.spec.resolve_checkpoint
  auto = jaxrnn.ComputeSpec()
  assert auto.checkpoint_every == "auto"
  assert resolve(auto, UNI, 100, 32, 4) is None
  assert resolve(auto, UNI, 512, 32, 4) is None
  assert resolve(auto, UNI, 513, 32, 4) == 23
  huge = 10**6
  assert resolve(auto, UNI, huge, 32, 4) == 1000
  assert resolve(auto, UNI, huge + 1, 32, 4) == 1001
  assert resolve(auto, BI, huge, 32, 4) is None
  assert resolve(jaxrnn.ComputeSpec(gradient="bptt"), UNI, huge, 32, 4) is None
  for every in (None, 5):
    assert resolve(jaxrnn.ComputeSpec(checkpoint_every=every), UNI, 100, 32, 4) == every
    assert resolve(jaxrnn.ComputeSpec(checkpoint_every=every), UNI, huge, 32, 4) == every


def test_auto_checkpoints_a_step_that_would_not_fit_fused(monkeypatch):
  """With the device's memory between the chunked and the fused step's estimate, a short
  sequence is chunked; with room for the fused one, it is not."""
  fused = jaxrnn.spec.step_memory(UNI, 100, 32, 4, None)
  chunked = jaxrnn.spec.step_memory(UNI, 100, 32, 4, 10)
  assert chunked < fused / 2
  monkeypatch.setattr(jaxrnn.checks, "device_memory", lambda: 2 * fused - 1)
  assert jaxrnn.spec.resolve_checkpoint(jaxrnn.ComputeSpec(), UNI, 100, 32, 4) == 10
  monkeypatch.setattr(jaxrnn.checks, "device_memory", lambda: 2 * fused)
  assert jaxrnn.spec.resolve_checkpoint(jaxrnn.ComputeSpec(), UNI, 100, 32, 4) is None


def test_auto_gives_the_numbers_of_none_and_of_k(monkeypatch):
  """Loss, gradients and final state of ``"auto"`` forced to chunk (no memory: ``k = 3`` pads
  T = 7) equal those of ``None`` and ``k = 3`` and the NumPy reference's loss (float64)."""
  prob = random_problem(31, T, B, num_layers=2, masked=True)
  model, spec = jaxrnn.ModelSpec(), jaxrnn.LossSpec()
  run = lambda every: value_and_grad.__wrapped__(prob.params, prob.batch, prob.h0, model, spec,
                                                 jaxrnn.ComputeSpec(checkpoint_every=every))
  plain, chunked = run(None), run(3)
  monkeypatch.setattr(jaxrnn.checks, "device_memory", lambda: 0)
  auto = run("auto")
  chex.assert_trees_all_close(auto, chunked, rtol=0, atol=0, strict=True)
  chex.assert_trees_all_close(auto, plain, rtol=1e-12, atol=1e-12, strict=True)
  want, want_final = reference_loss(prob, model, spec)
  chex.assert_trees_all_close(auto[0], (np.float64(want), want_final), rtol=1e-12, atol=1e-13,
                              strict=True)


def test_fused_chunk_rule():
  """Past ``FUSED_STEPS_LIMIT`` (512) a unidirectional fused step that stores every state runs
  in chunks of at most ``FUSED_CHUNK`` (64) steps, as few and as even as can be; never a
  bidirectional one. Its memory estimate is then about the states, not three arrays of them."""
  chunk = jaxrnn.spec.fused_chunk
  assert chunk(UNI, 512) is None
  assert chunk(UNI, 513) == 57                                     # 9 chunks
  assert chunk(UNI, 1000) == 63                                    # 16 chunks, 1,008 steps
  assert chunk(UNI, 1024) == 64
  assert chunk(BI, 10**6) is None
  per_state = 4 * 10**6 * 32 * 2 * 8                               # T B L H float32
  assert per_state < jaxrnn.spec.step_memory(UNI, 10**6, 32, 4, None) < 2 * per_state


@pytest.mark.parametrize("num_layers", [1, 2])
def test_fused_step_past_the_limit_gives_the_reference_loss_and_gradient(num_layers):
  """``checkpoint_every=None`` at T = 530 (> ``FUSED_STEPS_LIMIT``): every state stored, the
  read-out, loss and backward recursion run in 9 chunks of 59 (one padding step); loss, final
  state and gradient (params and h0) are the NumPy reference's (float64)."""
  num_steps = 530
  prob = random_problem(41 + num_layers, num_steps, 3, num_layers=num_layers, masked=True)
  model, spec = jaxrnn.ModelSpec(), jaxrnn.LossSpec("cross_entropy", "mean")
  compute = jaxrnn.ComputeSpec(checkpoint_every=None)
  jaxpr = jax.make_jaxpr(lambda p: jaxrnn.sequence_loss(p, prob.batch, prob.h0,
                                                        compute=compute))(prob.params)
  assert "remat" in str(jaxpr)                                     # it did run in chunks
  (value, final), grads = value_and_grad(prob.params, prob.batch, prob.h0, model, spec, compute)
  want, want_final = reference_loss(prob, model, spec)
  chex.assert_trees_all_close((value, final), (np.float64(want), want_final), rtol=1e-12,
                              atol=1e-13, strict=True)
  want_grads = reference.bptt(reference.as_numpy(prob.params), prob.batch.xs, prob.batch.targets,
                              prob.h0, prob.batch.lengths, prob.batch.target_mask, "tanh",
                              "identity", spec.loss, spec.reduction)
  chex.assert_trees_all_close(grads, want_grads, rtol=1e-10, atol=1e-12)
  assert np.max(np.abs(np.asarray(grads[0].layers[0][0].W_hh))) > 1e-4


def test_fused_train_step_scratch_is_at_most_1_5_times_states_and_inputs():
  """XLA's temp of the compiled fused train step (``value_and_grad`` + Adam, float32, T =
  1,000, B = 8, I = 32, H = 128, O = 32, ``checkpoint_every=None``) is at most 1.5x the states
  and inputs, ``4 T B (H + I)`` bytes (3.6x while ``dL/dh_t``, ``delta``, a transposed copy and
  the logits were held for all T; 1.30x measured in chunks), and below ``step_memory``."""
  num_steps, batch, (inputs, hidden, outputs) = 1000, 8, (32, 128, 32)
  params = random_params(0, (inputs, hidden, outputs), num_layers=1, dtype=jnp.float32)
  data = jaxrnn.Batch(jnp.zeros((num_steps, batch, inputs), jnp.float32),
                      jnp.zeros((num_steps, batch), jnp.int32))
  optimizer = optax.adam(1e-3)
  compute = jaxrnn.ComputeSpec(checkpoint_every=None, recurrence="scan")

  def step(params, opt_state, batch):
    (value, _), grads = jax.value_and_grad(jaxrnn.sequence_loss, has_aux=True)(
        params, batch, compute=compute)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  compiled = jax.jit(step).lower(params, optimizer.init(params), data).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp <= 1.5 * 4 * num_steps * batch * (hidden + inputs)
  assert temp < jaxrnn.spec.step_memory(jaxrnn.pytrees.shape_of(params), num_steps, batch, 4,
                                        None)


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
  plain, chunked = (temp_bytes(dataclasses.replace(scan, checkpoint_every=every))
                    for every in (None, 32))
  assert plain >= hs_bytes                 # measured: 2.85 MB plain, 0.44 MB chunked (k = 32)
  assert chunked < hs_bytes / 4


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_bfloat16_compute_is_close_to_float32(num_layers, bidirectional):
  prob = random_problem(7, 16, 8, sizes=(4, 16, 3), num_layers=num_layers,
                        bidirectional=bidirectional, masked=True, dtype=jnp.float32)
  model, spec = jaxrnn.ModelSpec(), jaxrnn.LossSpec(reduction="mean")
  full = value_and_grad(prob.params, prob.batch, prob.h0, model, spec)
  mixed = value_and_grad(prob.params, prob.batch, prob.h0, model, spec,
                         jaxrnn.ComputeSpec(dtype=jnp.bfloat16))
  chex.assert_trees_all_equal_shapes_and_dtypes(mixed, full)     # float32 loss, final, grads
  (loss32, final32), grads32 = full
  (loss16, final16), grads16 = mixed
  assert loss16 != loss32                                         # bf16 did run
  chex.assert_trees_all_close(loss16, loss32, rtol=1e-2)
  chex.assert_trees_all_close(final16, final32, rtol=0, atol=5e-2)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads32))
  chex.assert_trees_all_close(grads16, grads32, rtol=5e-2, atol=5e-2 * scale)


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
    jaxrnn.LossSpec(reduction="max")
  with pytest.raises(ValueError, match="loss.loss"):
    jaxrnn.LossSpec(loss="hinge")
  with pytest.raises(TypeError, match="loss"):
    jaxrnn.sequence_loss(params, batch, loss="cross_entropy")
  with pytest.raises(TypeError, match="compute"):
    jaxrnn.sequence_loss(params, batch, compute={"gradient": "fused"})
  with pytest.raises(TypeError, match="model"):
    jaxrnn.sequence_loss(params, batch, model={"activation": "tanh"})


@pytest.mark.parametrize("compute, key", [
    (jaxrnn.ComputeSpec(gradient="bptt"), jax.random.key(0)),
    (jaxrnn.ComputeSpec(gradient="bptt", checkpoint_every=2), None),
    (jaxrnn.ComputeSpec(gradient="bptt", dtype="bfloat16"), None)])
def test_the_bptt_oracle_takes_no_dropout_key_checkpointing_or_compute_dtype(compute, key):
  """Each is refused by the loss and by loss_and_grad; the same options with the fused gradient
  are taken (and give the loss's value)."""
  prob = random_problem(9, T, B)
  message = ("compute.gradient='bptt' is the plain hand-derived oracle: it takes no dropout key, "
             "checkpoint_every or compute dtype")
  for fn in (jaxrnn.sequence_loss, jaxrnn.loss_and_grad):
    with pytest.raises(ValueError, match=re.escape(message)):
      fn(prob.params, prob.batch, compute=compute, key=key)
  fused = dataclasses.replace(compute, gradient="fused")
  value, _ = jaxrnn.loss_and_grad(prob.params, prob.batch, compute=fused, key=key)
  want, _ = jaxrnn.sequence_loss(prob.params, prob.batch, compute=fused, key=key)
  np.testing.assert_allclose(float(value), float(want), rtol=1e-6)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_empty_sequences_give_zero_loss_zero_gradients_and_h0_as_final(num_layers, bidirectional):
  prob = random_problem(3, 0, 4, num_layers=num_layers, bidirectional=bidirectional)
  zeros = jax.tree.map(jnp.zeros_like, (prob.params, prob.h0))
  for gradient in ("fused", "autodiff"):
    loss = functools.partial(jaxrnn.sequence_loss, compute=jaxrnn.ComputeSpec(gradient=gradient))
    (value, final), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 2), has_aux=True))(
        prob.params, prob.batch, prob.h0)
    assert float(value) == 0
    chex.assert_trees_all_equal(final, prob.h0)
    chex.assert_trees_all_equal(grads, zeros, strict=True)
  chex.assert_trees_all_equal(jax.jit(jaxrnn.bptt)(prob.params, prob.batch, prob.h0), zeros,
                              strict=True)
