"""jaxrnn.recurrence: the masked chain against a NumPy loop; the fused custom VJP is the hand
recursion and equals lax.scan's own gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.recurrence import (backward_hidden, fused_layer, input_projection, previous_states,
                               scan_hidden, weight_gradients)
from test_unroll import NP_ACT, assert_rel_close

T, B, I, H = 7, 3, 2, 4


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


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("masked", [False, True])
def test_scan_hidden_matches_numpy_loop(activation, masked):
  pre, W_hh, h0, mask, _ = problem(0)
  mask = mask if masked else np.ones((T, B))
  hs = scan_hidden(jnp.asarray(pre), jnp.asarray(W_hh), jnp.asarray(h0),
                   jnp.asarray(mask) if masked else None, activation)
  want, h = np.zeros((T, B, H)), h0.copy()
  for t in range(T):
    h = np.where(mask[t][:, None] > 0, NP_ACT[activation](pre[t] + h @ W_hh.T), h)
    want[t] = h
  np.testing.assert_allclose(hs, want, rtol=1e-13, atol=1e-14)
  b_h = np.linspace(-1, 1, H)                          # b_h added inside each step instead
  hs_bias = scan_hidden(jnp.asarray(pre - b_h), jnp.asarray(W_hh), jnp.asarray(h0),
                        jnp.asarray(mask) if masked else None, activation, bias=jnp.asarray(b_h))
  np.testing.assert_allclose(hs_bias, want, rtol=1e-13, atol=1e-14)
  fused = fused_layer(jnp.asarray(pre), jnp.eye(H), jnp.zeros(H), jnp.asarray(W_hh),
                      jnp.asarray(h0), jnp.asarray(mask) if masked else None, activation, 3)
  np.testing.assert_allclose(fused, want, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("activation,masked,scan_unroll", [("tanh", False, 1), ("relu", True, 1),
                                                           ("tanh", True, 3)])
def test_fused_vjp_is_the_hand_recursion_and_equals_autodiff(activation, masked, scan_unroll):
  _, W_hh, h0, mask, g = map(jnp.asarray, problem(1))
  rng = np.random.default_rng(5)
  xs, W_xh, b_h = (jnp.asarray(rng.standard_normal(shape)) for shape in ((T, B, I), (H, I), (H,)))
  mask = mask if masked else None
  hs, vjp = jax.vjp(lambda *a: fused_layer(*a, mask, activation, scan_unroll),
                    xs, W_xh, b_h, W_hh, h0)
  dxs, dW_xh, db_h, dW_hh, dh0 = vjp(g)
  delta, dh0_hand = backward_hidden(W_hh, hs, h0, g, mask, activation, scan_unroll)
  assert_rel_close(dh0, dh0_hand, 1e-14)
  np_delta, np_xs, np_hs, np_h0 = map(np.asarray, (delta, xs, hs, h0))
  prev = np.concatenate([np_h0[None], np_hs[:-1]])                       # h_0..h_{T-1}
  assert_rel_close(dW_hh, sum(np_delta[t].T @ prev[t] for t in range(T)), 1e-12)
  assert_rel_close(dW_xh, sum(np_delta[t].T @ np_xs[t] for t in range(T)), 1e-12)
  assert_rel_close(db_h, np_delta.sum((0, 1)), 1e-12)
  assert_rel_close(dxs, np_delta @ np.asarray(W_xh), 1e-12)
  _, scan_vjp = jax.vjp(lambda x, wx, b, w, h: scan_hidden(input_projection(wx, b, x), w, h, mask,
                                                          activation), xs, W_xh, b_h, W_hh, h0)
  assert_rel_close((dxs, dW_xh, db_h, dW_hh, dh0), scan_vjp(g), 1e-12)
  if masked:                                        # a frozen sequence passes g straight to h0
    np.testing.assert_allclose(dh0[2], g[:, 2].sum(0), rtol=1e-13)
    np.testing.assert_array_equal(delta[:, 2], 0)


def test_weight_gradients_of_an_empty_sequence_are_zero():
  rng = np.random.default_rng(3)
  dW_xh, db_h, dW_hh = weight_gradients(jnp.zeros((0, B, H)), jnp.zeros((0, B, I)),
                                        jnp.zeros((0, B, H)), jnp.asarray(rng.standard_normal((B, H))))
  assert (dW_xh.shape, db_h.shape, dW_hh.shape) == ((H, I), (H,), (H, H))
  for grad in (dW_xh, db_h, dW_hh):
    np.testing.assert_array_equal(grad, 0)


def test_previous_states_and_input_projection():
  rng = np.random.default_rng(2)
  hs, h0 = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
  prev = previous_states(jnp.asarray(h0), jnp.asarray(hs))
  np.testing.assert_array_equal(prev[0], h0)
  np.testing.assert_array_equal(prev[1:], hs[:-1])
  W_xh, b_h, xs = rng.standard_normal((H, I)), rng.standard_normal(H), rng.standard_normal((T, B, I))
  np.testing.assert_allclose(input_projection(jnp.asarray(W_xh), jnp.asarray(b_h), jnp.asarray(xs)),
                             np.einsum("hi,tbi->tbh", W_xh, xs) + b_h, rtol=1e-13)
