"""The hand-derived BPTT (jaxrnn.bptt) equals the NumPy reference's BPTT and jax.grad through the
fused and the plain lax.scan paths on hypothesis-drawn problems (float64, 1e-10), and all equal
the reference's central finite differences; a class it cannot check under jit makes it NaN."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxrnn
import reference
from conftest import MODELS, random_problem

OUTPUTS = [(loss, out) for loss, outs in jaxrnn.spec.LOSSES.items() for out in outs]
STATIC = ("model", "loss")
TIGHT = dict(rtol=1e-10, atol=1e-12, strict=True)
"""Two exact gradients in float64: equal up to rounding."""


def grad_of_loss(params, batch, h0, model, loss, gradient):
  """``(dL/dparams, dL/dh0)`` by ``jax.grad(sequence_loss)`` with ``compute.gradient``."""
  compute = jaxrnn.ComputeSpec(gradient=gradient)
  return jax.grad(lambda p, h: jaxrnn.sequence_loss(p, batch, h, model=model, loss=loss,
                                                    compute=compute), argnums=(0, 1),
                  has_aux=True)(params, h0)[0]


@functools.partial(jax.jit, static_argnames=STATIC)
def three_gradients(params, batch, h0, model, loss):
  """The hand BPTT, jax.grad through the fused custom_vjp and through lax.scan: one program."""
  return (jaxrnn.bptt(params, batch, h0, model=model, loss=loss),
          grad_of_loss(params, batch, h0, model, loss, "fused"),
          grad_of_loss(params, batch, h0, model, loss, "autodiff"))


def reference_bptt(prob, model, loss, batch=None):
  """``(grads, dh0)`` of the NumPy reference's hand BPTT."""
  batch = prob.batch if batch is None else batch
  return reference.bptt(reference.as_numpy(prob.params), batch.xs, batch.targets, prob.h0,
                        batch.lengths, batch.target_mask, model.activation,
                        model.output_activation, loss.loss, loss.reduction)


@st.composite
def problems(draw):
  loss, output_activation = draw(st.sampled_from(OUTPUTS))
  num_layers = draw(st.integers(1, 3))
  bidirectional = draw(st.booleans())
  prob = random_problem(
      draw(st.integers(0, 2**16)), num_steps=draw(st.integers(1, 12)),
      batch=draw(st.integers(1, 5)), sizes=tuple(draw(st.integers(1, 5)) for _ in range(3)),
      num_layers=num_layers, bidirectional=bidirectional, loss=loss, masked=draw(st.booleans()))
  model = jaxrnn.ModelSpec(activation=draw(st.sampled_from(["tanh", "relu"])),
                           output_activation=output_activation)
  return prob, model, jaxrnn.LossSpec(loss, draw(st.sampled_from(["sum", "mean"])))


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=problems())
def test_hand_bptt_equals_reference_fused_and_autodiff_gradients(case):
  prob, model, loss = case
  hand, fused, autodiff = three_gradients(prob.params, prob.batch, prob.h0, model, loss)
  chex.assert_trees_all_equal_shapes_and_dtypes(hand, (prob.params, prob.h0))
  chex.assert_trees_all_close(hand, reference_bptt(prob, model, loss), **TIGHT)
  chex.assert_trees_all_close(hand, autodiff, **TIGHT)
  chex.assert_trees_all_close(fused, autodiff, **TIGHT)
  chex.assert_trees_all_close(hand, fused, **TIGHT)


FD_PROBLEM = dict(num_steps=3, batch=3, sizes=(2, 2, 3), num_layers=2, bidirectional=True,
                  masked=True)


@pytest.mark.parametrize("activation,loss,output_activation",
                         [(("tanh", "relu")[i % 2], *output) for i, output in enumerate(OUTPUTS)])
def test_gradients_equal_central_differences(activation, loss, output_activation):
  """A 2-layer bidirectional model with lengths and a target mask: every parameter and h0, the
  hand BPTT and jax.grad against the reference loss's central differences. Each output gets one
  activation, each activation half the outputs (the hypothesis test above mixes all of them)."""
  prob = random_problem(7, loss=loss, **FD_PROBLEM)
  batch = prob.batch._replace(lengths=jnp.array([3, 1, 2]))      # every sequence contributes
  model = jaxrnn.ModelSpec(activation=activation, output_activation=output_activation)
  spec = jaxrnn.LossSpec(loss, "mean")
  f = lambda tree: reference.loss(tree[0], batch.xs, batch.targets, tree[1], batch.lengths,
                                  batch.target_mask, activation, output_activation, loss,
                                  "mean")[0]
  numeric = reference.numerical_grad(f, (reference.as_numpy(prob.params), prob.h0))
  assert max(np.max(np.abs(leaf)) for leaf in jax.tree.leaves(numeric)) > 1e-2
  hand, fused, autodiff = three_gradients(prob.params, batch, prob.h0, model, spec)
  for grads in (hand, fused, autodiff):
    chex.assert_trees_all_close(grads, numeric, rtol=1e-6, atol=1e-8, strict=True)


hand_bptt = jax.jit(jaxrnn.bptt, static_argnames=STATIC)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_gradient_of_a_finished_sequence_is_zero(num_layers, bidirectional):
  """Steps past a sequence's end get no gradient: a length-0 sequence has dL/dh0 = 0 exactly,
  and inputs past the end do not matter."""
  prob = random_problem(3, 5, 2, num_layers=num_layers, bidirectional=bidirectional)
  batch = prob.batch._replace(lengths=jnp.array([5, 0]))
  model, spec = jaxrnn.ModelSpec(), jaxrnn.LossSpec()
  hand = hand_bptt(prob.params, batch, prob.h0, model=model, loss=spec)
  dh0 = hand[1]
  chex.assert_trees_all_equal(dh0[:, 1], jnp.zeros_like(dh0[:, 1]))
  assert float(jnp.max(jnp.abs(dh0[:, 0]))) > 1e-4
  changed = batch._replace(xs=batch.xs.at[:, 1].set(7.0))
  chex.assert_trees_all_equal(hand_bptt(prob.params, changed, prob.h0, model=model, loss=spec),
                              hand)


class TestBpttVariants(chex.TestCase):
  """jaxrnn.bptt jitted and not (chex variants)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODELS)
  def test_bptt_matches_the_reference_with_default_arguments(self, num_layers, bidirectional):
    prob = random_problem(11, 3, 2, sizes=(2, 2, 2), num_layers=num_layers,
                          bidirectional=bidirectional, masked=True)
    got = self.variant(jaxrnn.bptt)(prob.params, prob.batch)        # h0 = zeros, default specs
    want = reference.bptt(reference.as_numpy(prob.params), prob.batch.xs, prob.batch.targets,
                          None, prob.batch.lengths, prob.batch.target_mask)
    chex.assert_trees_all_close(got, want, **TIGHT)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODELS)
  def test_a_class_outside_0_O_raises_eagerly_and_makes_the_gradients_nan_under_jit(
      self, num_layers, bidirectional):
    prob = random_problem(13, 4, 3, num_layers=num_layers, bidirectional=bidirectional)
    model, spec = jaxrnn.ModelSpec(), jaxrnn.LossSpec()
    run = self.variant(functools.partial(jaxrnn.bptt, model=model, loss=spec))
    for bad in (2, 7, -1):                                          # O = 2
      batch = prob.batch._replace(targets=prob.batch.targets.at[2, 1].set(bad))
      if self.variant.type == chex.ChexVariantType.WITHOUT_JIT:
        with pytest.raises(ValueError, match="batch.targets"):
          run(prob.params, batch, prob.h0)
        continue
      grads, dh0 = run(prob.params, batch, prob.h0)
      for leaf in jax.tree.leaves(grads):
        assert np.all(np.isnan(leaf)), bad
      assert np.all(np.isnan(dh0[:, 1])), bad              # that sequence's dL/dh0
      rest = np.array([0, 2])
      others = prob.batch._replace(xs=prob.batch.xs[:, rest], targets=prob.batch.targets[:, rest])
      chex.assert_trees_all_close(dh0[:, rest],
                                  reference_bptt(prob._replace(h0=prob.h0[:, rest]), model, spec,
                                                 others)[1], **TIGHT)


def test_bptt_bad_arguments():
  prob = random_problem(12, 4, 2, num_layers=2, bidirectional=True)
  with pytest.raises(ValueError, match="model.output_activation"):
    jaxrnn.bptt(prob.params, prob.batch, model=jaxrnn.ModelSpec(output_activation="tanh"))
  with pytest.raises(ValueError, match="h0"):
    jaxrnn.bptt(prob.params, prob.batch, prob.h0[:, :1])
  with pytest.raises(TypeError, match="batch.targets"):
    jaxrnn.bptt(prob.params, prob.batch._replace(targets=None))
  with pytest.raises(TypeError, match="loss"):
    jaxrnn.bptt(prob.params, prob.batch, loss="cross_entropy")
  with pytest.raises(ValueError, match="model.activation"):
    jaxrnn.ModelSpec(activation="gelu")
