"""The persistent Pallas kernels (jaxrnn.kernels) equal the lax.scan path.

On a CPU the kernels run in Pallas interpret mode: the same kernel bodies,
grid, block specs and padding as on a GPU, without the Triton compile. Tests
marked ``gpu`` compile them for real and run only on a GPU.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxrnn
from conftest import MODELS, random_problem
from jaxrnn import kernels
from jaxrnn.recurrence import backward_hidden, fused_layer, scan_hidden

TOLERANCE = {jnp.float32: 1e-6, jnp.float64: 1e-12}
SCAN = jaxrnn.ComputeSpec(recurrence="scan")
KERNEL = jaxrnn.ComputeSpec(recurrence="kernel")


def chain(seed, num_steps, batch, hidden, masked, dtype):
  rng = np.random.default_rng(seed)
  normal = lambda *shape, scale=1.0: jnp.asarray(scale * rng.standard_normal(shape), dtype)
  mask = jnp.asarray(rng.random((num_steps, batch)) < 0.7, dtype) if masked else None
  return (normal(num_steps, batch, hidden), normal(hidden, hidden, scale=hidden ** -0.5),
          normal(batch, hidden, scale=0.5), mask, normal(num_steps, batch, hidden))


@settings(max_examples=15, deadline=None)
@given(num_steps=st.integers(1, 20), batch=st.integers(1, 9), hidden=st.integers(1, 12),
       masked=st.booleans(), activation=st.sampled_from(["tanh", "relu"]),
       dtype=st.sampled_from([jnp.float32, jnp.float64]), block_b=st.sampled_from([2, 4, 16]),
       seed=st.integers(0, 2**16))
def test_kernels_equal_scan(num_steps, batch, hidden, masked, activation, dtype, block_b, seed):
  pre, W_hh, h0, mask, g = chain(seed, num_steps, batch, hidden, masked, dtype)
  tol = TOLERANCE[dtype]
  model = jaxrnn.ModelSpec(activation=activation)

  @jax.jit                                        # one program per example: compiles dominate
  def both(pre, W_hh, h0, mask, g):
    hs = scan_hidden(pre, W_hh, h0, mask, model, SCAN)
    hs_kernel = kernels.forward_kernel(pre, W_hh, h0, mask, model, KERNEL, block_b,
                                       interpret=True)
    return (hs, hs_kernel, backward_hidden(W_hh, hs, g, mask, model, SCAN),
            kernels.backward_kernel(W_hh, hs, g, mask, model, KERNEL, block_b, interpret=True))

  hs, hs_kernel, grads, grads_kernel = both(pre, W_hh, h0, mask, g)
  chex.assert_trees_all_close(hs_kernel, hs, rtol=tol, atol=tol, strict=True)
  chex.assert_trees_all_close(grads_kernel, grads, rtol=tol, atol=tol, strict=True)


def test_kernels_on_empty_sequences():
  pre, W_hh, h0, mask, g = chain(0, 0, 3, 4, True, jnp.float64)
  model = jaxrnn.ModelSpec()
  chex.assert_shape(kernels.forward_kernel(pre, W_hh, h0, mask, model, KERNEL), (0, 3, 4))
  delta, dh0 = kernels.backward_kernel(W_hh, pre, g, mask, model, KERNEL)
  chex.assert_shape(delta, (0, 3, 4))
  chex.assert_trees_all_equal(dh0, jnp.zeros((3, 4)), strict=True)


def test_fused_vjp_through_the_kernels():
  xs, W_hh, h0, mask, g = chain(1, 9, 5, 6, True, jnp.float64)
  cell = jaxrnn.CellParams(W_hh[:, :4], W_hh, h0[0])
  model = jaxrnn.ModelSpec()
  run = lambda compute: jax.vjp(lambda x, c, h: fused_layer(x, c, h, mask, model, compute),
                                xs[..., :4], cell, h0)
  (hs, vjp), (hs_kernel, vjp_kernel) = run(SCAN), run(KERNEL)
  chex.assert_trees_all_close(hs_kernel, hs, rtol=1e-12, atol=1e-12, strict=True)
  chex.assert_trees_all_close(vjp_kernel(g), vjp(g), rtol=1e-12, atol=1e-12, strict=True)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_sequence_loss_gradient_with_the_kernels(num_layers, bidirectional):
  params, batch, h0 = random_problem(3, num_steps=7, batch=5, num_layers=num_layers,
                                     bidirectional=bidirectional, masked=True)
  grad = jax.jit(jax.grad(jaxrnn.sequence_loss, has_aux=True), static_argnames="compute")
  chex.assert_trees_all_close(grad(params, batch, h0, compute=KERNEL),
                              grad(params, batch, h0, compute=SCAN),
                              rtol=1e-12, atol=1e-12, strict=True)
  chex.assert_trees_all_close(jaxrnn.unroll(params, batch.xs, h0, batch.lengths, compute=KERNEL),
                              jaxrnn.unroll(params, batch.xs, h0, batch.lengths, compute=SCAN),
                              rtol=1e-12, atol=1e-12, strict=True)


def test_bfloat16_kernel_close_to_scan():
  pre, W_hh, h0, mask, _ = chain(2, 12, 4, 8, True, jnp.bfloat16)
  model = jaxrnn.ModelSpec()
  hs = kernels.forward_kernel(pre, W_hh, h0, mask, model, KERNEL, interpret=True)
  assert hs.dtype == jnp.bfloat16
  chex.assert_trees_all_close(np.float32(hs), np.float32(scan_hidden(pre, W_hh, h0, mask, model,
                                                                     SCAN)),
                              rtol=0, atol=3e-2)


def test_auto_picks_the_kernel_only_on_a_gpu_when_w_hh_fits():
  assert kernels.padded_hidden(1) == 16 and kernels.padded_hidden(17) == 32
  assert kernels.fits_on_chip(jnp.float32, 128) and not kernels.fits_on_chip(jnp.float32, 129)
  assert kernels.fits_on_chip(jnp.float32, 64, "highest")
  assert not kernels.fits_on_chip(jnp.float32, 65, "highest")
  assert kernels.fits_on_chip(jnp.bfloat16, 256, "highest")
  assert kernels.fits_on_chip(jnp.bfloat16, 256) and not kernels.fits_on_chip(jnp.bfloat16, 512)
  assert not kernels.fits_on_chip(jnp.float64, 16)
  assert kernels.use_kernel(KERNEL, jnp.float64, 4096)
  assert not kernels.use_kernel(SCAN, jnp.float32, 64)
  auto = jaxrnn.ComputeSpec(recurrence="auto", precision="default")
  assert kernels.use_kernel(auto, jnp.float32, 64) == (jax.default_backend() == "gpu")
  assert not kernels.use_kernel(dataclasses.replace(auto, precision="highest"), jnp.float32, 128)
  with pytest.raises(ValueError, match="power of two"):
    kernels.forward_kernel(*chain(0, 2, 2, 2, False, jnp.float32)[:4], jaxrnn.ModelSpec(), KERNEL,
                           block_b=3)


def test_recurrence_spec_is_checked():
  with pytest.raises(ValueError, match="compute.recurrence"):
    jaxrnn.ComputeSpec(recurrence="pallas")
  with pytest.raises(ValueError, match="needs gradient='fused'"):
    jaxrnn.ComputeSpec(gradient="autodiff", recurrence="kernel")


@pytest.mark.gpu
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype,precision,tol", [(jnp.float32, "highest", 1e-5),
                                                 (jnp.float32, "default", 1e-2),
                                                 (jnp.bfloat16, "highest", 5e-2)])
def test_compiled_kernels_on_a_gpu(masked, dtype, precision, tol):
  pre, W_hh, h0, mask, g = chain(4, 300, 40, 100, masked, dtype)
  model = jaxrnn.ModelSpec()
  exact = jaxrnn.ComputeSpec(recurrence="scan", precision="highest")
  compute = jaxrnn.ComputeSpec(recurrence="kernel", precision=precision)
  hs = scan_hidden(pre, W_hh, h0, mask, model, exact)
  hs_kernel = kernels.forward_kernel(pre, W_hh, h0, mask, model, compute, interpret=False)
  chex.assert_trees_all_close(np.float32(hs_kernel), np.float32(hs), rtol=0, atol=tol)
  delta, dh0 = backward_hidden(W_hh, hs, g, mask, model, exact)
  delta_k, dh0_k = kernels.backward_kernel(W_hh, hs, g, mask, model, compute, interpret=False)
  scale = float(jnp.abs(delta.astype(jnp.float32)).max()) + 1
  chex.assert_trees_all_close((np.float32(delta_k), np.float32(dh0_k)),
                              (np.float32(delta), np.float32(dh0)), rtol=0, atol=tol * scale)
