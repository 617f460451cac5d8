"""The Pallas kernels, lowered for CUDA on this CPU: no GPU needed to see that they still compile
to GPU kernels (JAX's defaults change: since 0.8 Pallas lowers to Mosaic GPU unless told Triton,
which these kernels need)."""

import re

import jax
import jax.numpy as jnp
import pytest

import jaxrnn

TRITON = "__gpu$xla.gpu.triton"


def cuda_module(fn, *args) -> str:
  """The StableHLO text of ``jax.export`` of ``fn`` for CUDA (the Triton calls allowed)."""
  exported = jax.export.export(
      jax.jit(fn), platforms=("cuda",),
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(TRITON)])(*args)
  return exported.mlir_module()


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("lengths", [None, [5, 2]])
def test_train_step_lowers_to_one_forward_and_one_backward_triton_kernel_per_layer(
    num_layers, lengths):
  """``recurrence="kernel"``: each layer's chain is one ``jaxrnn_forward`` and one
  ``jaxrnn_backward`` Triton call in the gradient's module, and no ``lax.scan`` loop of the
  chain is left (the CPU's interpret-mode branch is not lowered for CUDA)."""
  compute = jaxrnn.ComputeSpec(recurrence="kernel")
  params = jaxrnn.init_params(jax.random.key(0), 3, 16, 2, num_layers=num_layers,
                              dtype=jnp.float32)
  batch = jaxrnn.Batch(jnp.ones((5, 2, 3), jnp.float32), jnp.zeros((5, 2), jnp.int32),
                       None if lengths is None else jnp.asarray(lengths))
  grad = lambda p, b: jax.grad(lambda p: jaxrnn.sequence_loss(p, b, compute=compute)[0])(p)
  text = cuda_module(grad, params, batch)
  calls = re.findall(r'custom_call @(\S+)\(.*?name = "(jaxrnn_\w+)"', text)
  assert sorted(calls) == sorted([(TRITON, "jaxrnn_forward")] * num_layers
                                 + [(TRITON, "jaxrnn_backward")] * num_layers), calls
  assert "stablehlo.while" not in text                  # no interpret-mode loop, no scan


def test_inference_lowers_to_the_forward_kernel_only():
  """``infer`` on the kernels: one forward call, no backward."""
  compute = jaxrnn.ComputeSpec(recurrence="kernel")
  params = jaxrnn.init_params(jax.random.key(0), 3, 16, 2, dtype=jnp.float32)
  text = cuda_module(lambda p, xs: jaxrnn.infer(p, xs, compute=compute), params,
                     jnp.ones((5, 2, 3), jnp.float32))
  names = re.findall(r'name = "(jaxrnn_\w+)"', text)
  assert names == ["jaxrnn_forward"], names
