"""Truncated BPTT over long streams (Williams & Peng, 1990; Karpathy's min-char-rnn).

A stream ``x_1..x_T`` is cut into ``N = T / k`` consecutive chunks of ``k``
steps. Chunk ``c`` starts from the state the previous chunk ended in,
``h^{(c)}_0 = h^{(c-1)}_k``, but the gradient stops there: the update after
chunk ``c`` uses

``g^{(c)} = sum_{t in c} dL^{(c)}/dtheta_t``, ``L^{(c)} = sum_{t' in c} L_{t'}``,

the full BPTT gradient of the chunk's loss with the parameters' uses
``theta_t`` restricted to the chunk's own steps (``h^{(c)}_0`` a constant).
This is Keras' ``stateful=True``: the state carries over, the graph does not.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrnn.stacked import StackedParams, check_stacked, stacked_loss


class TBPTTResult(NamedTuple):
  """What :func:`tbptt_epoch` returns.

  Attributes:
    params: the params after one update per chunk.
    opt_state: the optimizer state after them.
    h: the state the stream ended in, ``[L, B, H]``, to carry into the next epoch.
    losses: each chunk's loss (before its update), ``[N]``.
  """
  params: StackedParams
  opt_state: Any
  h: jax.Array
  losses: jax.Array


def tbptt_chunks(xs: jax.Array, chunk_length: int) -> jax.Array:
  """Cuts a time-major stream ``[T, B, ...]`` into ``[T / k, k, B, ...]`` consecutive chunks.

  Raises:
    ValueError: ``chunk_length`` is not a positive int that divides ``T``.
  """
  num_steps = jnp.shape(xs)[0]
  if (not isinstance(chunk_length, int) or isinstance(chunk_length, bool) or chunk_length < 1
      or num_steps % chunk_length):
    raise ValueError(f"chunk_length must be a positive int dividing T={num_steps}, "
                     f"got {chunk_length!r}; trim or pad the stream first")
  return jnp.reshape(xs, (num_steps // chunk_length, chunk_length) + jnp.shape(xs)[1:])


def tbptt_grad(params: StackedParams, h: jax.Array, xs: jax.Array, targets: jax.Array,
               **loss_kwargs: Any) -> tuple[jax.Array, StackedParams, jax.Array]:
  """One chunk of truncated BPTT: the loss, its gradient, and the state to carry on.

  Args:
    params: a unidirectional :class:`StackedParams`.
    h: the state the previous chunk ended in, ``[L, B, H]``; the gradient
      stops at it.
    xs: the chunk's inputs, ``[k, B, I]``.
    targets: the chunk's targets, ``[k, B]`` or ``[k, B, O]``.
    **loss_kwargs: :func:`jaxrnn.stacked_loss`'s options (``loss``,
      ``activation``, ``reduction``, ``backward``, ``compute_dtype``, dropout
      rates and ``key``, ...).

  Returns:
    ``(L^{(c)}, g^{(c)}, h_next [L, B, H])``.
  """
  (loss, h_next), grads = jax.value_and_grad(stacked_loss, has_aux=True)(
      params, xs, targets, h0=jax.lax.stop_gradient(h), **loss_kwargs)
  return loss, grads, h_next


def tbptt_epoch(params: StackedParams, opt_state: Any, optimizer: optax.GradientTransformation,
                xs: jax.Array, targets: jax.Array, chunk_length: int,
                h0: jax.Array | None = None, key: jax.Array | None = None,
                **loss_kwargs: Any) -> TBPTTResult:
  """One pass over a stream with truncated BPTT: one optimizer update per chunk.

  A ``lax.scan`` over the chunks carries ``(params, opt_state, h)``; it is
  pure, so ``jax.jit`` it with the static arguments bound, e.g.
  ``jax.jit(functools.partial(tbptt_epoch, optimizer=opt, chunk_length=25))``.

  Args:
    params: a unidirectional :class:`StackedParams`.
    opt_state: ``optimizer.init(params)`` or the state of the previous epoch.
    optimizer: any ``optax.GradientTransformation``.
    xs: the stream, ``[T, B, I]`` (``B`` parallel streams).
    targets: ``[T, B]`` or ``[T, B, O]``.
    chunk_length: ``k``, which must divide ``T``.
    h0: the state to start from, ``[L, B, H]`` (e.g. the last epoch's ``h``); zeros if ``None``.
    key: a ``jax.random`` key for dropout (split once per chunk), or ``None``.
    **loss_kwargs: :func:`jaxrnn.stacked_loss`'s static options.

  Returns:
    :class:`TBPTTResult` ``(params, opt_state, h, losses [T / k])``.

  Example:
    >>> opt = optax.adam(1e-2)
    >>> params, opt_state, h, losses = jaxrnn.tbptt_epoch(
    ...     params, opt.init(params), opt, xs, targets, chunk_length=25)
  """
  shape = check_stacked(params, loss_kwargs.get("merge", "concat"))
  if shape.num_directions != 1:
    raise ValueError("truncated BPTT carries the state forward in time; a bidirectional model "
                     "has no such state")
  xs_chunks = tbptt_chunks(xs, chunk_length)                            # [N, k, B, I]
  target_chunks = tbptt_chunks(targets, chunk_length)                   # [N, k, B(, O)]
  if h0 is None:
    h0 = jnp.zeros((shape.num_layers, jnp.shape(xs)[1], shape.hidden_size), params.W_hy.dtype)
  keys = None if key is None else jax.random.split(key, xs_chunks.shape[0])

  def step(carry, chunk):
    params, opt_state, h = carry
    xs_c, targets_c, key_c = chunk
    loss, grads, h = tbptt_grad(params, h, xs_c, targets_c, key=key_c, **loss_kwargs)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, h), loss

  (params, opt_state, h), losses = jax.lax.scan(step, (params, opt_state, h0),
                                                (xs_chunks, target_chunks, keys))
  return TBPTTResult(params=params, opt_state=opt_state, h=h, losses=losses)
