"""Trading compute for memory: chunk-checkpointed training, and inference that stores nothing.

Training keeps ``hs = [h_1..h_T]`` (``T*B*H`` numbers) for the backward pass.
:func:`checkpointed_loss` cuts the sequence into chunks of ``k`` steps and
wraps each chunk's loss ``L_c = sum_{t in c} w_t L_t`` in ``jax.checkpoint``:
the forward pass keeps only the state at each chunk boundary (``T/k`` states),
and the backward pass recomputes one chunk's ``hs`` (``k`` states) at a time.
Peak memory grows like ``T/k + k``, i.e. like ``sqrt(T)`` for ``k ~ sqrt(T)``,
for one extra forward pass of compute.

:func:`infer` is the forward pass alone: ``h_t`` and ``y_t`` are computed
step by step inside the scan and no hidden state is kept, so beyond its
outputs ``ys [T, B, O]`` it needs ``O(B*H)`` memory.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.cell import OUTPUT_ACTIVATIONS, hidden_step, output_logits
from jaxrnn.init import RNNParams
from jaxrnn.unroll import SequenceInputs, check_inputs, hidden_states


def pad_steps(x: jax.Array, num_steps: int) -> jax.Array:
  """Zero-pads the leading (time) axis of ``x`` to ``num_steps``; ``[T, ...] -> [num_steps, ...]``."""
  return jnp.pad(x, [(0, num_steps - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def to_chunks(x: jax.Array, chunk_size: int) -> jax.Array:
  """``[T, ...] -> [T / chunk_size, chunk_size, ...]``."""
  return x.reshape((x.shape[0] // chunk_size, chunk_size) + x.shape[1:])


def checkpointed_loss(params: RNNParams, xs: jax.Array, targets: jax.Array, weights: jax.Array,
                      inputs: SequenceInputs, activation: str,
                      step_losses: Callable[[jax.Array, jax.Array], jax.Array],
                      chunk_size: int, backward: str = "fused",
                      scan_unroll: int = 1) -> jax.Array:
  """``L = sum_t w_t L_t`` with each chunk of ``chunk_size`` steps rematerialised.

  A ``lax.scan`` over chunks carries ``h`` from one chunk to the next; each
  chunk runs ``a_t = W_xh x_t + b_h``, the recurrence, ``z_t = W_hy h_t + b_y``
  and its loss under ``jax.checkpoint``. ``T`` is padded up to a multiple of
  ``chunk_size`` with frozen (mask 0), zero-weight steps, which change nothing.

  Args:
    params: :class:`RNNParams`.
    xs: ``[T, B, I]``.
    targets: ``[T, B]`` classes or ``[T, B, O]`` values.
    weights: ``w_t``, ``[T, B]``.
    inputs: checked ``h0 [B, H]`` and ``mask [T, B]`` (or ``None``).
    activation: ``"tanh"`` or ``"relu"``.
    step_losses: ``(z [k, B, O], targets) -> L_t [k, B]``.
    chunk_size: steps per chunk, ``k >= 1``; ``~sqrt(T)`` minimises memory.
    backward: ``"fused"`` or ``"autodiff"`` inside each chunk.
    scan_unroll: ``unroll`` of the per-chunk ``lax.scan``.

  Returns:
    The scalar loss, equal to the unchunked one.
  """
  if not (isinstance(chunk_size, int) and chunk_size >= 1):
    raise ValueError(f"checkpoint_every must be a positive int, got {chunk_size!r}")
  num_steps, batch = xs.shape[:2]
  padded = -(-num_steps // chunk_size) * chunk_size
  mask = inputs.mask
  if mask is None and padded != num_steps:
    mask = jnp.ones((num_steps, batch), xs.dtype)
  sequences = (xs, targets, weights, mask)
  chunks = jax.tree.map(lambda x: to_chunks(pad_steps(x, padded), chunk_size), sequences)

  @jax.checkpoint
  def chunk_loss(h, chunk):
    xs_c, targets_c, weights_c, mask_c = chunk                      # [k, B, ...]
    hs = hidden_states(params, xs_c, SequenceInputs(h, mask_c), activation,
                       backward=backward, scan_unroll=scan_unroll)  # [k, B, H]
    z = output_logits(params, hs)                                   # [k, B, O]
    return hs[-1], jnp.sum(weights_c * step_losses(z, targets_c))

  _, losses = jax.lax.scan(chunk_loss, inputs.h0, chunks)           # [T / k]
  return jnp.sum(losses)


def infer(params: RNNParams, xs: jax.Array, h0: jax.Array | None = None,
          lengths: jax.Array | None = None, activation: str = "tanh",
          output_activation: str = "identity") -> tuple[jax.Array, jax.Array]:
  """Forward-only run that keeps no hidden states: ``(h_T [B, H], ys [T, B, O])``.

  ``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``, ``y_t = out_act(W_hy h_t + b_y)``,
  one step at a time; equal to ``(hs[-1], ys)`` of :func:`jaxrnn.unroll` (with
  ``lengths``, ``h_T`` is each sequence's own final state and ``ys`` is zero
  past its end). Meant for evaluation and generation, not for ``jax.grad``.

  Args:
    params: :class:`RNNParams`.
    xs: ``[T, B, I]``.
    h0: ``[B, H]``, zeros when ``None``.
    lengths: ``[B]`` sequence lengths, or ``None``.
    activation: ``"tanh"`` or ``"relu"``.
    output_activation: ``"identity"``, ``"sigmoid"``, ``"tanh"`` or ``"softmax"``.

  Returns:
    ``(h_T [B, H], ys [T, B, O])``.
  """
  _checks.check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
  h0, mask = check_inputs(params, xs, h0, lengths, activation)
  out_act = OUTPUT_ACTIVATIONS[output_activation]
  live = jnp.ones(xs.shape[:2], xs.dtype) if mask is None else mask  # [T, B]

  def step(h, inputs):
    x_t, m_t = inputs                                                # [B, I], [B]
    keep = m_t[:, None] > 0
    h = jnp.where(keep, hidden_step(params, h, x_t, activation), h)  # [B, H]
    return h, jnp.where(keep, out_act(output_logits(params, h)), 0)  # [B, O]

  return jax.lax.scan(step, h0, (xs, live))
