"""Truncated BPTT over long streams (Williams & Peng, 1990; Karpathy's min-char-rnn).

A stream ``x_1..x_T`` is cut into ``N = T / k`` consecutive chunks of ``k``
steps. Chunk ``c`` starts from the states the previous chunk ended in,
``h^{(c)}_0 = h^{(c-1)}_k`` (every layer's), but the gradient stops there:
the update after chunk ``c`` uses

``g^{(c)} = sum_{t in c} dL^{(c)}/dtheta_t``, ``L^{(c)} = sum_{t' in c} L_{t'}``,

the full BPTT gradient of the chunk's loss with the parameters' uses
``theta_t`` restricted to the chunk's own steps (``h^{(c)}_0`` a constant).
This is Keras' ``stateful=True``: the state carries over, the graph does not.
It needs a state that runs forward in time, so a unidirectional model.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrnn import checks
from jaxrnn.data import Batch
from jaxrnn.losses import sequence_loss
from jaxrnn.parallel import as_mesh, split_value_and_grad
from jaxrnn.params import RNNParams, Shape
from jaxrnn.spec import ComputeSpec, LossSpec, ModelSpec


class TBPTTResult(NamedTuple):
  """What :func:`tbptt_epoch` returns.

  Attributes:
    params: the params after one update per chunk.
    opt_state: the optimizer state after them.
    h: the states the stream ended in, ``[L, B, H]``, to carry into the next epoch.
    losses: each chunk's loss (before its update), ``[N]``.
  """
  params: RNNParams
  opt_state: Any
  h: jax.Array
  losses: jax.Array


def tbptt_chunks(xs: jax.Array, chunk_length: int) -> jax.Array:
  """Cuts a time-major stream ``[T, B, ...]`` into ``[T / k, k, B, ...]`` consecutive chunks.

  Raises:
    ValueError: ``chunk_length`` is not a positive int that divides ``T``.
  """
  num_steps = jnp.shape(xs)[0]
  checks.check_positive_int("chunk_length", chunk_length)
  if num_steps % chunk_length:
    raise ValueError(f"chunk_length must divide T={num_steps}, got {chunk_length!r}; trim or pad "
                     "the stream first")
  return jnp.reshape(xs, (num_steps // chunk_length, chunk_length) + jnp.shape(xs)[1:])


def check_stateful(params: RNNParams) -> Shape:
  """Checks ``params`` and that the model has a state running forward in time; returns its shape."""
  shape = checks.check_params(params)
  checks.check_unidirectional(shape, "truncated BPTT", "it carries the state forward in time")
  return shape


def tbptt_grad(params: RNNParams, h: jax.Array, chunk: Batch, *, model: ModelSpec = ModelSpec(),
               loss: LossSpec = LossSpec(), compute: ComputeSpec = ComputeSpec(),
               key: jax.Array | None = None,
               mesh: Any = None) -> tuple[jax.Array, RNNParams, jax.Array]:
  """One chunk of truncated BPTT: the loss, its gradient, and the states to carry on.

  Args:
    params: a unidirectional :class:`jaxrnn.RNNParams`.
    h: the states the previous chunk ended in, ``[L, B, H]``; the gradient
      stops at them.
    chunk: the chunk's :class:`jaxrnn.Batch` (``xs [k, B, I]``, ``targets``).
    model, loss, compute, key: as :func:`jaxrnn.sequence_loss`'s.
    mesh: ``None``, or a ``jax.sharding.Mesh`` / device count: the ``B``
      streams (and ``h``) split over its devices, one ``psum`` of the loss and
      gradient (:func:`jaxrnn.parallel.split_value_and_grad`); ``h_next``
      stays split along ``B``. The same numbers to float rounding.

  Returns:
    ``(L^{(c)}, g^{(c)}, h_next [L, B, H])``.
  """
  check_stateful(params)
  if mesh is not None:
    local = lambda params, chunk, h, loss, key: tbptt_grad(
        params, h, chunk, model=model, loss=loss, compute=compute, key=key)
    return split_value_and_grad(local, params, chunk, mesh, h, model=model, loss=loss,
                                compute=compute, key=key)
  (value, h_next), grads = jax.value_and_grad(sequence_loss, has_aux=True)(
      params, chunk, jax.lax.stop_gradient(h), model=model, loss=loss, compute=compute, key=key)
  return value, grads, h_next


def tbptt_epoch(params: RNNParams, opt_state: Any, optimizer: optax.GradientTransformation,
                stream: Batch, chunk_length: int, h0: jax.Array | None = None, *,
                model: ModelSpec = ModelSpec(), loss: LossSpec = LossSpec(),
                compute: ComputeSpec = ComputeSpec(),
                key: jax.Array | None = None, mesh: Any = None) -> TBPTTResult:
  """One pass over a stream with truncated BPTT: one optimizer update per chunk.

  A ``lax.scan`` over the chunks carries ``(params, opt_state, h)``; it is
  pure, so ``jax.jit`` it with the static arguments bound, e.g.
  ``jax.jit(functools.partial(tbptt_epoch, optimizer=opt, chunk_length=25))``.

  Args:
    params: a unidirectional :class:`jaxrnn.RNNParams` of any depth.
    opt_state: ``optimizer.init(params)`` or the state of the previous epoch.
    optimizer: any ``optax.GradientTransformation``.
    stream: ``xs [T, B, I]`` (``B`` parallel streams) and ``targets``
      ``[T, B]`` or ``[T, B, O]``; no ``lengths`` or ``target_mask``.
    chunk_length: ``k``, which must divide ``T``.
    h0: the states to start from, ``[L, B, H]`` (e.g. the last epoch's ``h``); zeros if ``None``.
    model, loss, compute: the static specs.
    key: a ``jax.random`` key for dropout: chunk ``c`` uses ``fold_in(key, c)``.
    mesh: ``None``, or a ``jax.sharding.Mesh`` / device count to split the
      ``B`` streams over (``B`` divisible by it; see :func:`tbptt_grad`).

  Returns:
    :class:`TBPTTResult` ``(params, opt_state, h, losses [T / k])``.

  Example:
    >>> opt = optax.adam(1e-2)
    >>> params, opt_state, h, losses = jaxrnn.tbptt_epoch(
    ...     params, opt.init(params), opt, jaxrnn.Batch(xs, targets), chunk_length=25)
  """
  shape = check_stateful(params)
  checks.check_type("stream", stream, Batch)
  if stream.lengths is not None or stream.target_mask is not None:
    raise ValueError("stream must be a jaxrnn.Batch of xs and targets only (no lengths or "
                     "target_mask: a stream has no end)")
  mesh = None if mesh is None else as_mesh(mesh)
  chunks = jax.tree.map(lambda a: tbptt_chunks(a, chunk_length), stream)  # [N, k, B, ...]
  num_chunks = chunks.xs.shape[0]
  if h0 is None:
    h0 = jnp.zeros((shape.num_layers, jnp.shape(stream.xs)[1], shape.hidden_size),
                   params.W_hy.dtype)
  keys = None if key is None else jax.vmap(lambda c: jax.random.fold_in(key, c))(
      jnp.arange(num_chunks))

  def step(carry, inputs):
    params, opt_state, h = carry
    chunk, key_c = inputs
    value, grads, h = tbptt_grad(params, h, chunk, model=model, loss=loss, compute=compute,
                                 key=key_c, mesh=mesh)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, h), value

  (params, opt_state, h), losses = jax.lax.scan(step, (params, opt_state, h0), (chunks, keys))
  return TBPTTResult(params=params, opt_state=opt_state, h=h, losses=losses)
