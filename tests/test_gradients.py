"""The hand-derived BPTT equals jax.grad, and both equal finite differences (float64)."""

import functools
from typing import NamedTuple

import chex
import hypothesis.strategies as st
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import jaxrnn

OUTPUTS = [("cross_entropy", out) for out in jaxrnn.LOSSES["cross_entropy"]] + [
    ("squared_error", out) for out in jaxrnn.LOSSES["squared_error"]]


class Case(NamedTuple):
  params: jaxrnn.RNNParams
  xs: jax.Array
  targets: jax.Array
  h0: jax.Array
  kwargs: dict


def make_case(seed, num_steps, batch, sizes, activation, loss, output_activation, reduction,
              masked):
  """A random float64 problem; ``masked`` draws lengths in [0, T] and a random target mask.

  ``||W_hh||_2`` is capped at 1: an exploding chain (e.g. ReLU with
  ``W_hh = 2.7``, ``H = 1``, 9 steps) saturates the outputs, and two correct
  gradients computed in different orders then differ by more than 1e-10 from
  rounding alone (seen: 2.2e-10 with a softmax squared error).
  """
  in_size, hidden, out_size = sizes
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape))
  W_xh = normal(hidden, in_size) / np.sqrt(in_size)
  W_hh = normal(hidden, hidden) / np.sqrt(hidden)
  params = jaxrnn.RNNParams(W_xh=W_xh, W_hh=W_hh / max(1.0, float(jnp.linalg.norm(W_hh, ord=2))),
                            W_hy=normal(out_size, hidden) / np.sqrt(hidden),
                            b_h=0.1 * normal(hidden), b_y=0.1 * normal(out_size))
  if loss == "cross_entropy":
    targets = jnp.asarray(rng.integers(0, out_size, (num_steps, batch)))
  else:
    targets = normal(num_steps, batch, out_size)
  kwargs = dict(loss=loss, activation=activation, output_activation=output_activation,
                reduction=reduction)
  if masked:
    kwargs["lengths"] = jnp.asarray(rng.integers(0, num_steps + 1, batch))
    kwargs["target_mask"] = jnp.asarray(rng.random((num_steps, batch)) < 0.7)
  return Case(params, normal(num_steps, batch, in_size), targets, 0.5 * normal(batch, hidden),
              kwargs)


STATIC = ("loss", "activation", "output_activation", "reduction", "backward")
grad_loss = jax.jit(jax.grad(lambda params, h0, xs, targets, **kw: jaxrnn.sequence_loss(
    params, xs, targets, h0=h0, **kw), argnums=(0, 1)), static_argnames=STATIC)
hand_bptt = jax.jit(jaxrnn.bptt, static_argnames=STATIC[:-1])


def autodiff_grads(case, backward="autodiff"):
  """``(dL/dparams, dL/dh0)`` by ``jax.grad``."""
  return grad_loss(case.params, case.h0, case.xs, case.targets, backward=backward,
                   **case.kwargs)


def relative_difference(a, b):
  """max |a - b| / max |b| over the leaves (0 when both are exactly 0)."""
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = float(jnp.max(jnp.abs(y)))
    diff = float(jnp.max(jnp.abs(x - y)))
    worst = max(worst, diff / scale if scale > 0 else diff)
  return worst


@st.composite
def cases(draw):
  loss, output_activation = draw(st.sampled_from(OUTPUTS))
  return dict(
      seed=draw(st.integers(0, 2**16)),
      num_steps=draw(st.integers(1, 30)),
      batch=draw(st.integers(1, 6)),
      sizes=tuple(draw(st.integers(1, 10)) for _ in range(3)),
      activation=draw(st.sampled_from(["tanh", "relu"])),
      loss=loss, output_activation=output_activation,
      reduction=draw(st.sampled_from(["sum", "mean"])),
      masked=draw(st.booleans()))


@functools.partial(jax.jit, static_argnames=STATIC[:-1])
def three_gradients(params, h0, xs, targets, **kwargs):
  """``(dL/dparams, dL/dh0)`` three ways, in one compiled program (one compile per shape):
  ``jax.grad`` through ``lax.scan`` (no hand code involved), ``jax.grad`` through the
  fused custom_vjp (the training default), and the hand-derived :func:`jaxrnn.bptt`."""
  autodiff = grad_loss(params, h0, xs, targets, backward="autodiff", **kwargs)
  fused = grad_loss(params, h0, xs, targets, backward="fused", **kwargs)
  return autodiff, fused, jaxrnn.bptt(params, xs, targets, h0=h0, **kwargs)


@settings(max_examples=20, deadline=None)
@given(case=cases())
def test_hand_bptt_and_fused_gradient_equal_jax_grad(case):
  case = make_case(**case)
  (grads, dh0), fused, (hand_grads, hand_dh0) = three_gradients(
      case.params, case.h0, case.xs, case.targets, **case.kwargs)
  assert relative_difference(hand_grads, grads) <= 1e-10
  assert relative_difference(hand_dh0, dh0) <= 1e-10
  assert relative_difference(fused, (grads, dh0)) <= 1e-10
  chex.assert_trees_all_close(hand_grads, grads, rtol=1e-10, atol=1e-13)
  chex.assert_trees_all_equal_shapes(hand_grads, case.params)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("loss,output_activation", OUTPUTS)
def test_hand_bptt_equals_central_differences(activation, loss, output_activation):
  case = make_case(7, num_steps=6, batch=3, sizes=(3, 4, 3), activation=activation, loss=loss,
                   output_activation=output_activation, reduction="sum", masked=True)
  grads, dh0 = jaxrnn.bptt(case.params, case.xs, case.targets, h0=case.h0, **case.kwargs)
  flat, unravel = jax.flatten_util.ravel_pytree((case.params, case.h0))
  hand = jax.flatten_util.ravel_pytree((grads, dh0))[0]

  @jax.jit
  @jax.vmap
  def loss_at(vector):
    params, h0 = unravel(vector)
    return jaxrnn.sequence_loss(params, case.xs, case.targets, h0=h0, **case.kwargs)

  eps = 1e-6
  basis = np.eye(flat.size)
  numeric = (loss_at(flat + eps * basis) - loss_at(flat - eps * basis)) / (2 * eps)
  np.testing.assert_allclose(np.asarray(hand), numeric, rtol=1e-6, atol=1e-8)
  assert np.max(np.abs(numeric)) > 1e-3


def test_gradient_of_a_masked_step_is_zero():
  """Steps past a sequence's end get no gradient: a length-0 sequence gives dL/dh0 = 0."""
  case = make_case(3, num_steps=5, batch=2, sizes=(2, 3, 2), activation="tanh",
                   loss="cross_entropy", output_activation="identity", reduction="sum",
                   masked=False)
  lengths = jnp.array([5, 0])
  _, dh0 = jaxrnn.bptt(case.params, case.xs, case.targets, h0=case.h0, lengths=lengths,
                       **case.kwargs)
  assert float(jnp.max(jnp.abs(dh0[1]))) == 0.0
  assert float(jnp.max(jnp.abs(dh0[0]))) > 1e-4


def test_bptt_under_jit_matches_eager():
  case = make_case(11, num_steps=9, batch=4, sizes=(3, 5, 2), activation="relu",
                   loss="squared_error", output_activation="tanh", reduction="mean",
                   masked=True)
  chex.assert_trees_all_close(
      hand_bptt(case.params, case.xs, case.targets, h0=case.h0, **case.kwargs),
      jaxrnn.bptt(case.params, case.xs, case.targets, h0=case.h0, **case.kwargs),
      rtol=1e-12, atol=1e-14)
