"""jaxrnn.recurrence: the masked chain against the NumPy reference; the fused custom VJP is the hand
recursion and equals lax.scan's own gradient."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
import reference
from jaxrnn.recurrence import (backward_hidden, fused_layer, previous_states, scan_hidden,
                               weight_gradients)

T, B, I, H = 7, 3, 2, 4
SCAN = jaxrnn.ComputeSpec(recurrence="scan")


def problem(seed):
  rng = np.random.default_rng(seed)
  W_hh = rng.standard_normal((H, H)) / np.sqrt(H)
  W_hh /= max(1.0, np.linalg.norm(W_hh, 2))
  mask = np.ones((T, B))
  mask[4:, 1] = 0
  mask[:, 2] = 0
  mask[2, 0] = 0                                  # a hole: any 0/1 pattern freezes that step
  return (rng.standard_normal((T, B, H)), W_hh, rng.standard_normal((B, H)), mask,
          rng.standard_normal((T, B, H)))


def reference_chain(pre, W_hh, h0, mask, activation):
  """``h_t = act(a_t + W_hh h_{t-1})`` by ``reference.forward`` (``W_xh = I``, ``b_h = 0``), one
  sequence at a time over its live steps only: a frozen step is a skipped one."""
  params = ((((np.eye(H), W_hh, np.zeros(H)),),), np.zeros((1, H)), np.zeros(1))
  hs = np.zeros(pre.shape)
  for b in range(pre.shape[1]):
    live = mask[:, b] > 0
    states = reference.forward(params, pre[live, b:b + 1], h0[None, b:b + 1],
                               activation=activation)[1][0][0][:, 0]      # [live steps, H]
    hs[:, b] = np.concatenate([h0[b:b + 1], states])[np.cumsum(live)]   # held after each step
  return hs


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("masked", [False, True])
def test_scan_hidden_and_fused_layer_match_the_reference(activation, masked):
  pre, W_hh, h0, mask, _ = problem(0)
  mask = mask if masked else np.ones((T, B))
  model = jaxrnn.ModelSpec(activation=activation)
  jmask = jnp.asarray(mask) if masked else None
  want = reference_chain(pre, W_hh, h0, mask, activation)
  assert np.max(np.abs(want)) > 0.1
  hs = scan_hidden(jnp.asarray(pre), jnp.asarray(W_hh), jnp.asarray(h0), jmask, model, SCAN)
  chex.assert_trees_all_close(hs, want, rtol=1e-13, atol=1e-14, strict=True)
  b_h = np.linspace(-1, 1, H)                          # b_h added inside each step instead
  hs_bias = scan_hidden(jnp.asarray(pre - b_h), jnp.asarray(W_hh), jnp.asarray(h0), jmask, model,
                        SCAN, bias=jnp.asarray(b_h))
  chex.assert_trees_all_close(hs_bias, want, rtol=1e-13, atol=1e-14, strict=True)
  cell = jaxrnn.CellParams(jnp.eye(H), jnp.asarray(W_hh), jnp.zeros(H))
  fused = fused_layer(jnp.asarray(pre), cell, jnp.asarray(h0), jmask, model,
                      jaxrnn.ComputeSpec(scan_unroll=3, recurrence="scan"))
  chex.assert_trees_all_close(fused, want, rtol=1e-13, atol=1e-14, strict=True)


@pytest.mark.parametrize("activation,masked,scan_unroll", [("tanh", False, 1), ("relu", True, 1),
                                                           ("tanh", True, 3)])
def test_fused_vjp_is_the_hand_recursion_and_equals_autodiff(activation, masked, scan_unroll):
  _, W_hh, h0, mask, g = map(jnp.asarray, problem(1))
  rng = np.random.default_rng(5)
  xs, W_xh, b_h = (jnp.asarray(rng.standard_normal(shape)) for shape in ((T, B, I), (H, I), (H,)))
  mask = mask if masked else None
  model = jaxrnn.ModelSpec(activation=activation)
  compute = jaxrnn.ComputeSpec(scan_unroll=scan_unroll, recurrence="scan")
  cell = jaxrnn.CellParams(W_xh, W_hh, b_h)
  hs, vjp = jax.vjp(lambda x, c, h: fused_layer(x, c, h, mask, model, compute), xs, cell, h0)
  grads = vjp(g)                                                         # (dxs, dcell, dh0)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, (xs, cell, h0))
  delta, dh0_hand = backward_hidden(W_hh, hs, g, mask, model, compute)
  np_delta, np_xs, np_hs, np_h0 = map(np.asarray, (delta, xs, hs, h0))
  prev = np.concatenate([np_h0[None], np_hs[:-1]])                       # h_0..h_{T-1}
  hand = (np_delta @ np.asarray(W_xh),
          jaxrnn.CellParams(sum(np_delta[t].T @ np_xs[t] for t in range(T)),
                            sum(np_delta[t].T @ prev[t] for t in range(T)),
                            np_delta.sum((0, 1))),
          dh0_hand)
  chex.assert_trees_all_close(grads, hand, rtol=1e-12, atol=1e-14, strict=True)
  _, scan_vjp = jax.vjp(lambda x, c, h: scan_hidden(x @ c.W_xh.T + c.b_h, c.W_hh, h, mask, model,
                                                    compute), xs, cell, h0)
  chex.assert_trees_all_close(grads, scan_vjp(g), rtol=1e-12, atol=1e-14, strict=True)
  assert float(jnp.max(jnp.abs(grads[1].W_hh))) > 1e-2                  # a real gradient
  if masked:                                        # a frozen sequence passes g straight to h0
    chex.assert_trees_all_close(grads[2][2], g[:, 2].sum(0), rtol=1e-13, strict=True)
    chex.assert_trees_all_equal(delta[:, 2], jnp.zeros_like(delta[:, 2]))


def test_weight_gradients_of_an_empty_sequence_are_zero():
  rng = np.random.default_rng(3)
  grads = weight_gradients(jnp.zeros((0, B, H)), jnp.zeros((0, B, I)), jnp.zeros((0, B, H)),
                           jnp.asarray(rng.standard_normal((B, H))))
  chex.assert_trees_all_equal(grads, (jnp.zeros((H, I)), jnp.zeros(H), jnp.zeros((H, H))),
                              strict=True)


def test_previous_states():
  rng = np.random.default_rng(2)
  hs, h0 = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
  prev = previous_states(jnp.asarray(h0), jnp.asarray(hs))
  chex.assert_shape(prev, (T, B, H))
  np.testing.assert_array_equal(prev[0], h0)
  np.testing.assert_array_equal(prev[1:], hs[:-1])
