"""ComputeSpec.precision: checked, applied to every matmul of the forward and the backward pass.

The custom_vjp backward of the fused path is traced during differentiation,
outside the forward's precision scope; these tests read the precision of every
``dot_general`` in the jaxpr of ``jax.grad`` (scan bodies, the custom_vjp
backward and the Pallas kernels' bodies included).
"""

import chex
import jax
import jax.numpy as jnp
import pytest

import jaxrnn
from conftest import MODELS, all_equations, random_problem

PRECISION = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}


def dot_precisions(jaxpr):
  """The ``precision`` of every ``dot_general`` in ``jaxpr`` and all the jaxprs inside it."""
  return [eqn.params["precision"] for eqn in all_equations(jaxpr)
          if eqn.primitive.name == "dot_general"]


def test_default_is_highest_and_values_are_checked():
  assert jaxrnn.ComputeSpec().precision == "highest"
  assert jaxrnn.ComputeSpec(precision="default").precision == "default"
  for bad in ("tf32", None, "HIGHEST"):
    with pytest.raises(ValueError, match="compute.precision"):
      jaxrnn.ComputeSpec(precision=bad)


PATHS = [(model, "fused", "scan", None) for model in MODELS] + [
    (model, "autodiff", "scan", None) for model in MODELS] + [
    (model, "fused", "kernel", None) for model in MODELS] + [
    ((1, False), "fused", "scan", 3), ((2, False), "fused", "scan", 3)]  # unidirectional only


@pytest.mark.parametrize("model,gradient,recurrence,checkpoint_every", PATHS)
@pytest.mark.parametrize("precision", ["highest", "default"])
def test_every_dot_of_forward_and_backward_has_the_precision(model, gradient, recurrence,
                                                             checkpoint_every, precision):
  num_layers, bidirectional = model
  params, batch, h0 = random_problem(0, num_layers=num_layers, bidirectional=bidirectional,
                                     masked=True)
  compute = jaxrnn.ComputeSpec(gradient=gradient, precision=precision, recurrence=recurrence,
                               checkpoint_every=checkpoint_every)
  loss = lambda p: jaxrnn.sequence_loss(p, batch, h0, compute=compute)[0]
  other = "default" if precision == "highest" else "highest"
  with jax.default_matmul_precision(other):          # an ambient setting does not leak in
    found = dot_precisions(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
  forward = dot_precisions(jax.make_jaxpr(loss)(params).jaxpr)
  num_cells = num_layers * (2 if bidirectional else 1)
  # forward: input projection + recurrence per cell, read-out; backward adds dW_hh, dW_xh, dx ...
  assert len(found) >= 2 * len(forward) >= 2 * (2 * num_cells + 1)
  assert set(found) == {(PRECISION[precision],) * 2}
  outputs = jax.make_jaxpr(lambda p: jaxrnn.unroll(p, batch.xs, h0, batch.lengths,
                                                   compute=compute))(params)
  assert set(dot_precisions(outputs.jaxpr)) == {(PRECISION[precision],) * 2}


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_both_precisions_are_exact_on_a_cpu(num_layers, bidirectional):
  if jax.default_backend() != "cpu":
    pytest.skip("only a CPU computes Precision.DEFAULT exactly")
  params, batch, h0 = random_problem(1, num_layers=num_layers, bidirectional=bidirectional,
                                     masked=True, dtype=jnp.float32)
  grad = jax.jit(jax.grad(jaxrnn.sequence_loss, has_aux=True), static_argnames="compute")
  highest, default = (grad(params, batch, h0, compute=jaxrnn.ComputeSpec(precision=p))
                      for p in ("highest", "default"))
  chex.assert_trees_all_equal(highest, default, strict=True)
