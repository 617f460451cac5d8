"""Forward passes for using a trained model: inference that stores nothing, and generation.

Both step every layer one time step at a time (:func:`jaxrnn.cell.stack_step`),
so a unidirectional model needs only its ``[L, B, H]`` states, whatever ``T``.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn import checks, kernels, timesplit
from jaxrnn.cell import output_logits, readout, stack_step
from jaxrnn.pytrees import RNNParams, shape_of
from jaxrnn.spec import ComputeSpec, ModelSpec, check_specs, precision_scope
from jaxrnn.unroll import forward


def infer(params: RNNParams, xs: jax.Array, h0: jax.Array | None = None,
          lengths: jax.Array | None = None, *, model: ModelSpec = ModelSpec(),
          compute: ComputeSpec = ComputeSpec(), mesh: Any = None) -> tuple[jax.Array, jax.Array]:
  """Forward-only run: ``(final [L*D, B, H], ys [T, B, O])``, equal to :func:`jaxrnn.unroll`'s.

  A unidirectional model keeps only its ``[L, B, H]`` states besides ``ys``;
  a bidirectional one (whose reverse direction starts at the end), or one on
  the Pallas kernels (``compute.recurrence``), runs layer by layer, one
  layer's ``[T, B, D*H]`` outputs at a time. No dropout; not for ``jax.grad``.
  The arguments are :func:`jaxrnn.unroll`'s; ``mesh`` splits the batch, or, for
  fewer sequences than devices, time (:func:`jaxrnn.split_time`).

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> final, ys = jaxrnn.infer(params, jnp.ones((6, 4, 3)))   # xs [T, B, I]
    >>> final.shape, ys.shape
    ((1, 4, 5), (6, 4, 2))
  """
  shape, h0, mask = checks.check_inputs(params, xs, h0, lengths)
  check_specs(shape, model, None, compute)
  if mesh is not None:
    return timesplit.on_mesh(infer, lambda out: (out.final, out.ys), params, xs, h0, lengths,
                             mesh, model=model, compute=compute)
  return forward_only(params, xs, h0, mask, model, compute)


@functools.partial(jax.jit, static_argnums=(4, 5))
def forward_only(params: RNNParams, xs: jax.Array, h0: jax.Array, mask: jax.Array | None,
                 model: ModelSpec, compute: ComputeSpec) -> tuple[jax.Array, jax.Array]:
  """:func:`infer` on checked inputs, one program per shape and specs."""
  shape = shape_of(params)
  if shape.num_directions == 2 or kernels.use_kernel(compute, params.W_hy.dtype,
                                                     shape.hidden_size):
    trace = forward(params, xs, h0, mask, model, compute)
    with precision_scope(compute):
      return trace.final, readout(params, trace.top, model, mask)
  num_steps, batch = jnp.shape(xs)[:2]
  live = jnp.ones((num_steps, batch), xs.dtype) if mask is None else mask  # [T, B]

  def body(h, inputs):
    x_t, m_t = inputs                                                    # [B, I], [B]
    h, top = stack_step(params, h, x_t, model, m_t[:, None] > 0)         # [L, B, H], [B, H]
    return h, readout(params, top, model, m_t)                           # [B, O]

  with precision_scope(compute):
    final, ys = jax.lax.scan(body, h0, (xs, live), unroll=compute.scan_unroll)
  return final + 0 * live.sum(0)[None, :, None], ys                      # NaN for a bad length


def min_temperature(dtype: Any) -> float:
  """The smallest ``temperature`` :func:`generate` takes for params of ``dtype``: logits up to
  ``1e6`` over it stay finite."""
  return 1e6 / float(jnp.finfo(dtype).max)


def generate(params: RNNParams, key: jax.Array, prompt: jax.Array, length: int,
             temperature: float = 1.0, *, model: ModelSpec = ModelSpec(),
             compute: ComputeSpec = ComputeSpec()) -> jax.Array:
  """Samples ``length`` symbols after ``prompt`` from a next-symbol model (e.g. a character LM).

  The model reads one-hot symbols (``I = O``) and its logits give
  ``p(s_{t+1}) = softmax(z_t / temperature)``. The prompt is read first, then
  each sampled symbol is fed back, in one ``lax.scan``; symbol ``i`` is drawn
  with ``fold_in(key, i)``, so equal keys give equal text.

  ``params``: unidirectional, ``I == O``; ``prompt``: ``[P >= 1]`` symbols in ``[0, O)``;
  ``temperature > 0``: below 1 sharpens, above 1 flattens. Returns ``[length]`` symbols, all
  ``-1`` if the prompt holds one outside ``[0, O)`` (which only ``jit`` hides from the check).

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> lm = jaxrnn.init_params(jax.random.key(0), 6, 8, 6)
    >>> jaxrnn.generate(lm, jax.random.key(0), jnp.array([3, 1, 4]), 5).shape
    (5,)
  """
  shape = checks.check_params(params)
  check_specs(shape, model, None, compute)
  checks.check_key("key", key)
  checks.check_unidirectional(shape, "generate", "it would read text that is not written "
                              "yet")
  if shape.input_size != shape.output_size:
    raise ValueError(f"generate feeds each output symbol back as the next input, so the input "
                     f"size I={shape.input_size} must equal the output size O={shape.output_size}")
  checks.check_shape("prompt", prompt, "[P]", (None,))
  if not jnp.issubdtype(jnp.result_type(prompt), jnp.integer):
    raise TypeError(f"prompt must hold integer symbols, got dtype {jnp.result_type(prompt)}")
  if jnp.shape(prompt)[0] < 1:
    raise ValueError("prompt must hold at least one symbol")
  if checks.is_concrete(prompt):
    values = jax.device_get(prompt)
    if values.min() < 0 or values.max() >= shape.output_size:
      raise ValueError(f"prompt symbols must lie in [0, {shape.output_size})")
  checks.check_int("length", length, 0)
  needed = length * jnp.dtype(jnp.int32).itemsize                       # the [length] symbols
  if needed > checks.device_memory():
    raise ValueError(f"length={length} needs {needed / 2**30:.1f} GiB for the sampled symbols, "
                     f"more than the {checks.device_memory() / 2**30:.1f} GiB of the device")
  checks.check_real("temperature", temperature, min_temperature(params.W_hy.dtype))
  return sample(params, key, prompt, length, temperature, model, compute)


@functools.partial(jax.jit, static_argnums=(3, 5, 6))
def sample(params: RNNParams, key: jax.Array, prompt: jax.Array, length: int,
           temperature: float, model: ModelSpec, compute: ComputeSpec) -> jax.Array:
  """:func:`generate` on checked arguments, one program per shape, ``length`` and specs."""
  shape, dtype = shape_of(params), params.W_hy.dtype
  one_hot = lambda s: jax.nn.one_hot(s, shape.input_size, dtype=dtype)

  def read(h, symbol):
    h, top = stack_step(params, h, one_hot(symbol), model)
    return h, output_logits(params, top)

  def write(carry, i):
    h, z = carry
    symbol = jax.random.categorical(jax.random.fold_in(key, i), z / temperature)
    return read(h, symbol), symbol

  with precision_scope(compute):
    h, logits = jax.lax.scan(read, jnp.zeros((shape.num_layers, shape.hidden_size), dtype), prompt)
    _, symbols = jax.lax.scan(write, (h, logits[-1]), jnp.arange(length),
                              unroll=compute.scan_unroll)
  valid = jnp.all((prompt >= 0) & (prompt < shape.output_size))
  return jnp.where(valid, symbols, -1)
