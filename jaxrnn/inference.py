"""Forward passes for using a trained model: inference that stores nothing, and generation.

Both step the model one time step at a time with the cell of
:func:`jaxrnn.rnn_cell` (the same ``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``
as the forward body), so a unidirectional model of any depth needs only its
``[L, B, H]`` states in memory, whatever ``T``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn import checks
from jaxrnn.cell import OUTPUT_ACTIVATIONS, output_logits, stack_step
from jaxrnn.params import RNNParams
from jaxrnn.spec import ComputeSpec, ModelSpec
from jaxrnn.unroll import forward


def infer(params: RNNParams, xs: jax.Array, h0: jax.Array | None = None,
          lengths: jax.Array | None = None, *,
          model: ModelSpec = ModelSpec()) -> tuple[jax.Array, jax.Array]:
  """Forward-only run: ``(final [L*D, B, H], ys [T, B, O])``, equal to :func:`jaxrnn.unroll`'s.

  A unidirectional model runs all its layers one time step at a time and keeps
  no hidden states beyond the ``[L, B, H]`` current ones (memory ``O(L B H)``
  besides ``ys``). A bidirectional model cannot (its reverse direction starts
  at the end), so it keeps one layer's ``[T, B, 2H]`` outputs at a time.
  Meant for evaluation and serving, not for ``jax.grad``; no dropout.

  Args:
    params: :class:`jaxrnn.RNNParams`.
    xs: ``[T, B, I]``.
    h0: ``[L*D, B, H]``, zeros when ``None``.
    lengths: ``[B]`` sequence lengths, or ``None``; past a sequence's end the
      state holds and ``ys`` is zero.
    model: :class:`jaxrnn.ModelSpec`.

  Returns:
    ``(final [L*D, B, H], ys [T, B, O])``.
  """
  shape, h0, mask = checks.check_inputs(params, xs, h0, lengths)
  checks.check_model(model)
  num_steps, batch = jnp.shape(xs)[:2]
  dtype = params.W_hy.dtype
  out_act = OUTPUT_ACTIVATIONS[model.output_activation]
  live = jnp.ones((num_steps, batch), dtype) if mask is None else mask  # [T, B]
  if shape.num_directions == 2:
    trace = forward(params, xs, h0, mask, model, ComputeSpec(gradient="autodiff"))
    ys = jnp.where(live[..., None] > 0, out_act(output_logits(params, trace.top)),
                   0 * live[..., None])                                  # 0, NaN for a bad length
    return trace.final, ys

  def step(h, inputs):
    x_t, m_t = inputs                                                    # [B, I], [B]
    keep = m_t[:, None] > 0
    h_new, top = stack_step(params, h, x_t, model.activation)            # [L, B, H], [B, H]
    y = jnp.where(keep, out_act(output_logits(params, top)), 0 * m_t[:, None])  # [B, O]
    return jnp.where(keep, h_new, h), y

  return jax.lax.scan(step, h0, (xs, live))


def generate(params: RNNParams, key: jax.Array, prompt: jax.Array, length: int,
             temperature: float = 1.0, *, model: ModelSpec = ModelSpec()) -> jax.Array:
  """Samples ``length`` symbols after ``prompt`` from a next-symbol model (e.g. a character LM).

  The model reads one-hot symbols (``I = O``, the vocabulary size) and its
  logits ``z_t`` give ``p(s_{t+1}) = softmax(z_t / temperature)``. The prompt
  is read first; then each sampled symbol is fed back, one
  :func:`jaxrnn.rnn_cell` step each, inside one ``lax.scan``. Symbol ``i`` is
  drawn with ``jax.random.fold_in(key, i)``, so equal keys give equal text.

  Args:
    params: a unidirectional :class:`jaxrnn.RNNParams` with ``I == O``.
    key: a ``jax.random`` key.
    prompt: ``[P]`` integer symbols in ``[0, O)``, ``P >= 1``.
    length: how many symbols to sample, ``>= 0``.
    temperature: a finite number ``> 0``; below 1 sharpens, above 1 flattens.
    model: :class:`jaxrnn.ModelSpec` (its output activation is not used:
      sampling reads the logits).

  Returns:
    ``[length]`` sampled symbols.

  Example:
    >>> codes = jaxrnn.generate(params, jax.random.key(0), jnp.array([3, 1, 4]), 100)
  """
  shape = checks.check_params(params)
  checks.check_model(model)
  checks.check_unidirectional(shape, "generate", "it would read text that is not written "
                              "yet")
  if shape.input_size != shape.output_size:
    raise ValueError(f"generate feeds each output symbol back as the next input, so the input "
                     f"size I={shape.input_size} must equal the output size O={shape.output_size}")
  checks.check_array("prompt", prompt)
  checks.check_rank("prompt", prompt, 1, "[P]")
  if not jnp.issubdtype(jnp.result_type(prompt), jnp.integer):
    raise TypeError(f"prompt must hold integer symbols, got dtype {jnp.result_type(prompt)}")
  if jnp.shape(prompt)[0] < 1:
    raise ValueError("prompt must hold at least one symbol")
  if checks.is_concrete(prompt):
    values = jax.device_get(prompt)
    if values.min() < 0 or values.max() >= shape.output_size:
      raise ValueError(f"prompt symbols must lie in [0, {shape.output_size})")
  if not isinstance(length, int) or isinstance(length, bool) or length < 0:
    raise ValueError(f"length must be an int >= 0, got {length!r}")
  checks.check_positive_number("temperature", temperature)
  dtype = params.W_hy.dtype
  one_hot = lambda s: jax.nn.one_hot(s, shape.input_size, dtype=dtype)

  def read(h, symbol):
    h, top = stack_step(params, h, one_hot(symbol), model.activation)
    return h, output_logits(params, top)

  h = jnp.zeros((shape.num_layers, shape.hidden_size), dtype)
  h, logits = jax.lax.scan(read, h, prompt)

  def write(carry, i):
    h, z = carry
    symbol = jax.random.categorical(jax.random.fold_in(key, i), z / temperature)
    return read(h, symbol), symbol

  _, symbols = jax.lax.scan(write, (h, logits[-1]), jnp.arange(length))
  return symbols
