"""The hand-derived BPTT (jaxrnn.bptt) equals jax.grad through the fused and the plain
lax.scan paths on hypothesis-drawn problems, and all equal central finite differences (float64)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxrnn
from conftest import MODELS, random_problem

OUTPUTS = [(loss, out) for loss, outs in jaxrnn.spec.LOSSES.items() for out in outs]
STATIC = ("model", "loss")


def relative_difference(a, b):
  """max over leaves of ``max |a - b| / max |b|`` (``max |a - b|`` where ``b`` is all zero)."""
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.shape == y.shape and x.dtype == y.dtype
    scale = float(jnp.max(jnp.abs(y), initial=0))
    diff = float(jnp.max(jnp.abs(x - y), initial=0))
    worst = max(worst, diff / scale if scale > 0 else diff)
  return worst


def grad_of_loss(params, batch, h0, model, loss, gradient):
  """``(dL/dparams, dL/dh0)`` by ``jax.grad(sequence_loss)`` with ``compute.gradient``."""
  compute = jaxrnn.ComputeSpec(gradient=gradient)
  return jax.grad(lambda p, h: jaxrnn.sequence_loss(p, batch, h, model=model, loss=loss,
                                                    compute=compute), argnums=(0, 1),
                  has_aux=True)(params, h0)[0]


@jax.jit(static_argnames=STATIC)
def three_gradients(params, batch, h0, model, loss):
  """The hand BPTT, jax.grad through the fused custom_vjp and through lax.scan: one program."""
  return (jaxrnn.bptt(params, batch, h0, model=model, loss=loss),
          grad_of_loss(params, batch, h0, model, loss, "fused"),
          grad_of_loss(params, batch, h0, model, loss, "autodiff"))


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
def test_hand_bptt_equals_fused_and_autodiff_gradients(case):
  prob, model, loss = case
  hand, fused, autodiff = three_gradients(prob.params, prob.batch, prob.h0, model, loss)
  assert relative_difference(hand, autodiff) <= 1e-10
  assert relative_difference(fused, autodiff) <= 1e-10
  assert relative_difference(hand, fused) <= 1e-10
  grads, dh0 = hand
  assert jax.tree.structure(grads) == jax.tree.structure(prob.params)
  assert all(g.shape == p.shape for g, p in zip(jax.tree.leaves(grads),
                                                jax.tree.leaves(prob.params)))
  assert dh0.shape == prob.h0.shape


FD_PROBLEM = dict(num_steps=3, batch=3, sizes=(2, 2, 3), num_layers=2, bidirectional=True,
                  masked=True)


@jax.jit(static_argnames=("model", "loss", "unravel"))
def hand_and_central_differences(flat, batch, model, loss, unravel, eps=1e-6):
  """``(bptt gradient, central differences)`` of ``L(params, h0)`` at ``flat``, both flat."""
  params, h0 = unravel(flat)
  hand = jax.flatten_util.ravel_pytree(jaxrnn.bptt(params, batch, h0, model=model, loss=loss))[0]

  def loss_at(vector):
    params, h0 = unravel(vector)
    return jaxrnn.sequence_loss(params, batch, h0, model=model, loss=loss)[0]

  loss_at = jax.vmap(loss_at)
  basis = jnp.eye(flat.size, dtype=flat.dtype)
  return hand, (loss_at(flat + eps * basis) - loss_at(flat - eps * basis)) / (2 * eps)


class Unravel:
  """A hashable wrapper of ``ravel_pytree``'s unravel (a static argument of the jit above)."""

  def __init__(self, tree):
    self.flat, self.fn = jax.flatten_util.ravel_pytree(tree)

  def __call__(self, vector):
    return self.fn(vector)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("loss,output_activation", OUTPUTS)
def test_hand_bptt_equals_central_differences(activation, loss, output_activation):
  """A 2-layer bidirectional model with lengths and a target mask: every parameter and h0."""
  prob = random_problem(7, loss=loss, **FD_PROBLEM)
  batch = prob.batch._replace(lengths=jnp.array([3, 1, 2]))      # every sequence contributes
  model = jaxrnn.ModelSpec(activation=activation, output_activation=output_activation)
  unravel = Unravel((prob.params, prob.h0))
  hand, numeric = hand_and_central_differences(unravel.flat, batch, model,
                                               jaxrnn.LossSpec(loss, "mean"), unravel)
  np.testing.assert_allclose(np.asarray(hand), np.asarray(numeric), rtol=1e-6, atol=1e-8)
  assert np.max(np.abs(np.asarray(numeric))) > 1e-2


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
  assert float(jnp.max(jnp.abs(dh0[:, 1]))) == 0.0
  assert float(jnp.max(jnp.abs(dh0[:, 0]))) > 1e-4
  changed = batch._replace(xs=batch.xs.at[:, 1].set(7.0))
  assert relative_difference(hand_bptt(prob.params, changed, prob.h0, model=model, loss=spec),
                             hand) == 0.0


def test_bptt_under_jit_matches_eager_and_defaults():
  prob = random_problem(11, 3, 2, sizes=(2, 2, 2), masked=True)
  jitted = jax.jit(jaxrnn.bptt)(prob.params, prob.batch)
  eager = jaxrnn.bptt(prob.params, prob.batch)                   # h0 = zeros, default specs
  assert relative_difference(jitted, eager) <= 1e-12


def test_bptt_bad_arguments():
  prob = random_problem(12, 4, 2, num_layers=2, bidirectional=True)
  with pytest.raises(ValueError, match="model.output_activation"):
    jaxrnn.bptt(prob.params, prob.batch, model=jaxrnn.ModelSpec(output_activation="tanh"))
  with pytest.raises(ValueError, match="h0"):
    jaxrnn.bptt(prob.params, prob.batch, prob.h0[:, :1])
  with pytest.raises(TypeError, match="batch.targets"):
    jaxrnn.bptt(prob.params, prob.batch._replace(targets=None))
  with pytest.raises(ValueError, match="model.activation"):
    jaxrnn.bptt(prob.params, prob.batch, model=jaxrnn.ModelSpec(activation="gelu"))
