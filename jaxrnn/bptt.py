"""Backpropagation through time, derived and written by hand, for every model.

No ``jax.grad``/``jax.vjp`` is used here: every gradient is one of the seed's
equations, in the order the chain rule applies them. It is the oracle the tests
hold ``jax.grad`` to, and (through :func:`jaxrnn.recurrence.fused_layer`) the
backward pass the library trains with.
"""

import functools

import jax
import jax.numpy as jnp

from jaxrnn.cell import output_activation, output_logits, time_order
from jaxrnn.losses import Problem, prepare
from jaxrnn.pytrees import Batch, CellParams, RNNParams
from jaxrnn.recurrence import backward_hidden, previous_states
from jaxrnn.spec import PLAIN, LossSpec, ModelSpec
from jaxrnn.unroll import forward

def output_delta(z: jax.Array, targets: jax.Array, model: ModelSpec, loss: LossSpec) -> jax.Array:
  """``dL_t/dz_t`` for ``z_t = W_hy h_t + b_y``, unweighted; ``[T, B, O]``.

  * cross-entropy (``identity`` or ``softmax`` output): ``softmax(z_t) - onehot(target_t)``.
  * squared error, ``g = dL_t/dy_t = 2 (y_t - target_t)``, times ``out_act'``:
    identity ``g``; sigmoid ``g y (1 - y)``; tanh ``g (1 - y^2)``;
    softmax ``y * (g - <g, y>)`` (the softmax Jacobian ``diag(y) - y y^T``).

  A class index outside ``[0, O)`` gives NaN, as in :func:`jaxrnn.losses.step_losses`.
  """
  if loss.loss == "cross_entropy":
    valid = (targets >= 0) & (targets < z.shape[-1])                    # [T, B]
    delta = jax.nn.softmax(z, axis=-1) - jax.nn.one_hot(targets, z.shape[-1], dtype=z.dtype)
    return jnp.where(valid[..., None], delta, jnp.nan)
  y = output_activation(model, z)
  g = 2 * (y - targets)
  if model.output_activation == "sigmoid":
    return g * y * (1 - y)
  if model.output_activation == "tanh":
    return g * (1 - y * y)
  if model.output_activation == "softmax":
    return y * (g - jnp.sum(g * y, axis=-1, keepdims=True))
  return g


def bptt(params: RNNParams, batch: Batch, h0: jax.Array | None = None, *,
         model: ModelSpec = ModelSpec(),
         loss: LossSpec = LossSpec()) -> tuple[RNNParams, jax.Array]:
  """Hand-derived gradient of :func:`jaxrnn.sequence_loss` and ``dL/dh_0``.

  Forward (per layer ``l`` and direction ``d``, the reverse direction reading
  time backwards): ``a_t = W_xh x^l_t + b_h``, ``h_t = act(a_t + W_hh h_{t-1})``;
  ``x^{l+1}_t = [h^{l,0}_t; h^{l,1}_t]``, ``z_t = W_hy x^L_t + b_y``,
  ``L = sum_t w_t L_t``. Backward, line for line below:

  1. ``dz_t = w_t dL_t/dz_t``                              (:func:`output_delta`)
  2. ``dL/dW_hy = sum_t dz_t (x^L_t)^T``, ``dL/db_y = sum_t dz_t``
  3. ``g_t = dL/dx^L_t = W_hy^T dz_t``, zero past each sequence's end
  4. per direction, with ``g_t`` its half of ``dL/dx^{l+1}_t``:
     ``delta_t = (g_t + W_hh^T delta_{t+1}) * act'(a_t + W_hh h_{t-1})``,
     a reverse ``lax.scan`` (:func:`jaxrnn.recurrence.backward_hidden`);
     ``dL/dh_0 = W_hh^T delta_1``
  5. ``dL/dW_hh = sum_t delta_t h_{t-1}^T``, ``dL/dW_xh = sum_t delta_t (x^l_t)^T``,
     ``dL/db_h = sum_t delta_t``
  6. ``dL/dx^l_t = sum_d W_xh^T delta_t``: the ``g_t`` of layer ``l - 1``.

  Step 5 is the seed's
  ``dL/dW_hh = sum_t sum_{k<=t} dL_t/dh_t dh_t/dh_k dh_k/dW_hh``: ``delta_k``
  already holds ``sum_{t>=k} dL_t/dh_t dh_t/dh_k`` (times ``act'`` at ``k``).

  The arguments are :func:`jaxrnn.sequence_loss`'s, without dropout. Returns
  ``(grads, dh0)``: ``dL/dparams`` as :class:`jaxrnn.RNNParams`, ``dL/dh_0 [L*D, B, H]``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> batch = jaxrnn.Batch(jax.random.normal(jax.random.key(1), (6, 4, 3)),  # xs [T, B, I]
    ...                      jnp.ones((6, 4), int))                         # targets [T, B]
    >>> grads, dh0 = jaxrnn.bptt(params, batch)
    >>> autodiff, _ = jax.grad(jaxrnn.sequence_loss, has_aux=True)(params, batch)
    >>> jax.tree.all(jax.tree.map(jnp.allclose, grads, autodiff))   # to ~1e-7 relative in float32
    True
    >>> dh0.shape                                                   # dL/dh_0 [L*D, B, H]
    (1, 4, 5)
  """
  problem = prepare(params, batch, h0, None, model, loss, PLAIN)
  return hand_gradients(params, batch, problem, model, loss)


@functools.partial(jax.jit, static_argnums=(3, 4))
def hand_gradients(params: RNNParams, batch: Batch, problem: Problem, model: ModelSpec,
                   loss: LossSpec) -> tuple[RNNParams, jax.Array]:
  """:func:`bptt` on checked inputs (no dropout); the steps are numbered as there."""
  trace = forward(params, batch.xs, problem.h0, problem.mask, model, PLAIN)
  z = output_logits(params, trace.top)                                      # z_t  [T, B, O]
  num_dirs, hidden = len(params.layers[0]), problem.h0.shape[-1]
  live = jnp.ones(batch.xs.shape[:2], z.dtype) if problem.mask is None else problem.mask

  w = problem.weights[..., None]                                            # w_t  [T, B, 1]
  dz = jnp.where(w != 0, w * output_delta(z, batch.targets, model, loss), 0)  # 1  [T, B, O]
  dW_hy = jnp.einsum("tbo,tbh->oh", dz, trace.top)                         # 2
  db_y = jnp.sum(dz, axis=(0, 1))
  g = dz @ params.W_hy                                                      # 3  [T, B, D*H]
  layers, dh0 = [], [None] * len(problem.h0)
  for l in reversed(range(len(params.layers))):
    g = g * live[..., None]
    dx = 0
    cells = []
    for d, cell in enumerate(params.layers[l]):
      h0_ld = problem.h0[l * num_dirs + d]
      hs = time_order(trace.states[l][d], d == 1)                          # processing order
      g_d = time_order(g[..., d * hidden:(d + 1) * hidden], d == 1)
      mask = None if problem.mask is None else time_order(problem.mask, d == 1)
      delta, dh0[l * num_dirs + d] = backward_hidden(cell.W_hh, hs, g_d, mask, model, PLAIN)  # 4
      dW_hh = jnp.einsum("tbh,tbk->hk", delta, previous_states(h0_ld, hs))  # 5
      delta = time_order(delta, d == 1)                                     # time order
      dW_xh = jnp.einsum("tbh,tbi->hi", delta, trace.inputs[l])
      db_h = jnp.sum(delta, axis=(0, 1))
      cells.append(CellParams(W_xh=dW_xh, W_hh=dW_hh, b_h=db_h))
      dx = dx + delta @ cell.W_xh                                           # 6  [T, B, I_l]
    layers.insert(0, tuple(cells))
    g = dx
  return RNNParams(layers=tuple(layers), W_hy=dW_hy, b_y=db_y), jnp.stack(dh0)
