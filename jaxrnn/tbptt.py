"""Truncated BPTT over long streams (Williams & Peng, 1990; Karpathy's min-char-rnn).

A stream is cut into ``N = T / k`` chunks of ``k`` steps. Chunk ``c`` starts
from the states the previous one ended in, ``h^{(c)}_0 = h^{(c-1)}_k``, but the
gradient stops there: the update after chunk ``c`` is the BPTT gradient of
``L^{(c)} = sum_{t in c} L_t`` with ``h^{(c)}_0`` a constant (Keras'
``stateful=True``: the state carries over, the graph does not). The state
runs forward in time, so the model is unidirectional.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrnn import checks, parallel
from jaxrnn.losses import prepare
from jaxrnn.pytrees import Batch, RNNParams, Shape
from jaxrnn.spec import ComputeSpec, LossSpec, ModelSpec, check_specs
from jaxrnn.train import check_opt_state, check_optimizer, opt_state_layout, value_and_grad


class TBPTTResult(NamedTuple):
  """What :func:`tbptt_epoch` returns: ``params`` and ``opt_state`` after one update per chunk,
  the states ``h [L, B, H]`` the stream ended in (for the next epoch), each chunk's loss
  before its update, ``losses [N]``."""
  params: RNNParams
  opt_state: Any
  h: jax.Array
  losses: jax.Array


TBPTTStep = Callable[..., tuple[RNNParams, Any, jax.Array, jax.Array]]


def tbptt_chunks(xs: jax.Array, chunk_length: int) -> jax.Array:
  """Cuts a time-major stream ``[T, B, ...]`` into ``[T / k, k, B, ...]`` consecutive chunks.

  Raises:
    ValueError: ``chunk_length`` is not a positive int that divides ``T``.
  """
  num_steps = jnp.shape(xs)[0]
  checks.check_int("chunk_length", chunk_length)
  if num_steps % chunk_length:
    raise ValueError(f"chunk_length must divide T={num_steps}, got {chunk_length!r}; trim or pad "
                     "the stream first")
  return jnp.reshape(xs, (num_steps // chunk_length, chunk_length) + jnp.shape(xs)[1:])


def check_stateful(shape: Shape) -> None:
  """Raises ``ValueError`` unless the model of ``shape`` has its state running forward in time."""
  checks.check_unidirectional(shape, "truncated BPTT", "it carries the state forward in time")


def make_tbptt_step(optimizer: optax.GradientTransformation, *, model: ModelSpec = ModelSpec(),
                    loss: LossSpec = LossSpec(), compute: ComputeSpec = ComputeSpec(),
                    mesh: Any = None) -> TBPTTStep:
  """One chunk of truncated BPTT and its update:
  ``(params, opt_state, h, chunk, key=None) -> (params, opt_state, h_next, L^{(c)})``.

  The chunk's loss starts from ``h [L, B, H]`` and its gradient stops there.
  Pure and traceable (jit it, or run it in :func:`tbptt_epoch`). ``optimizer``,
  the specs and ``mesh`` are :func:`jaxrnn.make_train_step`'s; with a mesh,
  ``h`` and ``h_next`` are split along ``B`` with the streams.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> optimizer = optax.sgd(0.1)
    >>> step = jax.jit(jaxrnn.make_tbptt_step(optimizer))
    >>> chunk = jaxrnn.Batch(jnp.ones((3, 4, 3)), jnp.ones((3, 4), int))   # k = 3 steps, B = 4
    >>> h = jnp.zeros((1, 4, 5))                                           # [L, B, H]
    >>> params, opt_state, h, loss = step(params, optimizer.init(params), h, chunk)
    >>> h.shape, loss.shape                       # h goes on to the next chunk
    ((1, 4, 5), ())
  """
  check_specs(None, model, loss, compute)
  check_optimizer(optimizer)
  body = parallel.split(functools.partial(value_and_grad, model=model, loss=loss,
                                          compute=compute), mesh)

  def tbptt_step(params, opt_state, h, chunk, key=None):
    check_stateful(checks.check_params(params))
    check_opt_state(opt_state, opt_state_layout(optimizer, params))
    problem = prepare(params, chunk, jax.lax.stop_gradient(h), key, model, loss, compute)
    (value, grads), h_next = body(params, chunk, problem)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, h_next, value

  return tbptt_step


def tbptt_epoch(step: TBPTTStep, params: RNNParams, opt_state: Any, stream: Batch,
                chunk_length: int, h0: jax.Array | None = None, *,
                key: jax.Array | None = None) -> TBPTTResult:
  """One pass over a stream with truncated BPTT: one optimizer update per chunk.

  A ``lax.scan`` over the chunks carries ``(params, opt_state, h)``, compiled
  once per ``step``, shapes and ``chunk_length``; it is pure, so a caller's
  ``jax.jit`` takes ``step`` and ``chunk_length`` static.

  ``step`` from :func:`make_tbptt_step` runs each chunk of ``chunk_length`` (which divides
  ``T``) steps of ``stream`` (``xs [T, B, I]``, ``B`` streams, and ``targets``; no ``lengths``
  or ``target_mask``), from ``h0 [L, B, H]`` (zeros if ``None``); chunk ``c``'s dropout uses
  ``fold_in(key, c)``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> stream = jaxrnn.Batch(jnp.ones((6, 4, 3)), jnp.ones((6, 4), int))   # 4 streams of 6
    >>> optimizer = optax.adam(1e-2)
    >>> step = jaxrnn.make_tbptt_step(optimizer)
    >>> result = jaxrnn.tbptt_epoch(step, params, optimizer.init(params), stream, chunk_length=3)
    >>> result.losses.shape                      # T = 6 steps in 2 chunks
    (2,)
  """
  checks.check_type("stream", stream, Batch)
  if stream.lengths is not None or stream.target_mask is not None:
    raise ValueError("stream must be a jaxrnn.Batch of xs and targets only (no lengths or "
                     "target_mask: a stream has no end)")
  if key is not None:
    checks.check_key("key", key)
  shape, h0, _ = checks.check_inputs(params, stream.xs, h0, None, "stream.xs")  # h0: zeros if None
  check_stateful(shape)
  steps_and_rows = jnp.shape(stream.xs)[:2]                                 # (T, B)
  checks.check_shape("stream.targets", stream.targets, "[T, B, ...]",
                     steps_and_rows + (None,) * (jnp.ndim(stream.targets) - 2))
  chunks = jax.tree.map(lambda a: tbptt_chunks(a, chunk_length), stream)  # [N, k, B, ...]
  num_chunks = chunks.xs.shape[0]
  keys = None if key is None else jax.vmap(lambda c: jax.random.fold_in(key, c))(
      jnp.arange(num_chunks))
  return epoch(step, params, opt_state, chunks, h0, keys)


@functools.partial(jax.jit, static_argnums=0)
def epoch(step: TBPTTStep, params: RNNParams, opt_state: Any, chunks: Batch, h0: jax.Array,
          keys: jax.Array | None) -> TBPTTResult:
  """:func:`tbptt_epoch` on checked ``chunks [N, k, B, ...]`` and their dropout ``keys [N]``."""
  def body(carry, inputs):
    params, opt_state, h = carry
    chunk, key_c = inputs
    params, opt_state, h, value = step(params, opt_state, h, chunk, key_c)
    return (params, opt_state, h), value

  (params, opt_state, h), losses = jax.lax.scan(body, (params, opt_state, h0), (chunks, keys))
  return TBPTTResult(params=params, opt_state=opt_state, h=h, losses=losses)
