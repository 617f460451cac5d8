"""jaxrnn as an Equinox layer: :class:`RNN`, an ``eqx.Module`` that runs :func:`jaxrnn.unroll`.

Needs Equinox (``pip install -e ".[equinox]"``); ``import jaxrnn`` does not import this module.
The layer's one array field, ``params``, is a :class:`jaxrnn.RNNParams`, so
``eqx.filter_value_and_grad`` gives gradients laid out as the functional API's, computed by
jaxrnn's fused hand-derived BPTT. Dropout takes a ``key`` per call, as ``eqx.nn.Dropout``
does, and ``eqx.nn.inference_mode`` (or ``inference=True``) turns it off. Unlike Equinox's
cells, the layer takes a whole batch at once (no ``jax.vmap``).
:meth:`RNN.to_params` and :meth:`RNN.from_params` convert to and from the functional API.
"""

from typing import Any

import equinox as eqx
import jax

from jaxrnn import checks, layers
from jaxrnn.pytrees import RNNParams, Shape
from jaxrnn.spec import ComputeSpec, InitSpec, ModelSpec


class RNN(eqx.Module):
  """An Elman RNN of ``num_layers`` layers, one or two directions and an optional read-out.

  ``h^{l,d}_t = act(W_xh^{l,d} x^l_t + W_hh^{l,d} h^{l,d}_{t-1} + b_h^{l,d})`` (``t+1``
  in the reverse direction),
  ``y_t = out_act(W_hy x^L_t + b_y)``: the model of :func:`jaxrnn.unroll`, whose
  arguments the constructor takes as ``torch.nn.RNN`` does.

  Args:
    input_size, hidden_size: ``I`` and ``H``.
    output_size: ``O``, the size of the read-out ``y_t``; ``None``: no read-out, a call
      returns the top layer's output ``hs = x^L``.
    num_layers, bidirectional: ``L`` layers of ``D = 2`` directions, or 1.
    activation, output_activation, dropout, input_dropout, state_dropout: the fields of
      :class:`jaxrnn.ModelSpec` (``dropout`` is torch's, between layers; the other two are
      variational, Keras' ``dropout`` and ``recurrent_dropout``).
    init, dtype: :func:`jaxrnn.init_params`'s.
    batch_first: inputs and outputs ``[B, T, .]`` instead of ``[T, B, .]``.
    compute: a :class:`jaxrnn.ComputeSpec` (gradient, recurrence, precision, ...).
    inference: no dropout (``eqx.nn.inference_mode`` sets it).
    key: a ``jax.random`` key for the weights.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn.equinox
    >>> layer = jaxrnn.equinox.RNN(3, 5, 2, num_layers=2, key=jax.random.key(0))
    >>> ys, final = layer(jnp.ones((4, 7, 3)))                   # xs [T, B, I]
    >>> ys.shape, final.shape
    ((4, 7, 2), (2, 7, 5))
    >>> layer.params.layers[1][0].W_xh.shape
    (5, 5)
  """
  params: RNNParams
  shape: Shape = eqx.field(static=True)
  model: ModelSpec = eqx.field(static=True)
  compute: ComputeSpec = eqx.field(static=True)
  batch_first: bool = eqx.field(static=True)
  inference: bool

  def __init__(self, input_size: int, hidden_size: int, output_size: int | None = None, *,
               num_layers: int = 1, bidirectional: bool = False, activation: str = "tanh",
               output_activation: str = "identity", dropout: float = 0.0,
               input_dropout: float = 0.0, state_dropout: float = 0.0,
               init: InitSpec | str = InitSpec(), dtype: Any = None, batch_first: bool = False,
               compute: ComputeSpec = ComputeSpec(), inference: bool = False, key: jax.Array):
    model = layers.model_spec(activation, output_activation, dropout, input_dropout, state_dropout)
    self.params = layers.new_params(key, input_size, hidden_size, output_size, num_layers,
                                    bidirectional, init, dtype)
    self.shape = checks.check_params(self.params)
    layers.check_options(self.shape, model, compute, batch_first)
    if not isinstance(inference, bool):
      raise TypeError(f"inference must be a bool, got {inference!r}")
    self.model, self.compute = model, compute
    self.batch_first, self.inference = batch_first, inference

  def __call__(self, xs: jax.Array, lengths: jax.Array | None = None,
               h0: jax.Array | None = None, *, key: jax.Array | None = None,
               inference: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """``(ys [T, B, O] or, without a read-out, hs [T, B, D*H], final [L*D, B, H])``.

    Args:
      xs: ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``), in the weights' dtype.
      lengths: ``[B]`` in ``[0, T]``; outputs past a sequence's end are zero, its final
        state is its last live one. ``None``: all ``T``.
      h0: ``[L*D, B, H]`` (row ``l*D + d``), or ``None`` for zeros.
      key: a ``jax.random`` key for this call's dropout masks (needed for a layer with
        dropout in training mode; ignored otherwise).
      inference: overrides the layer's (no dropout when true).
    """
    inference = layers.no_dropout("inference", inference, self.inference)
    if not layers.has_dropout(self.model) or inference:
      key = None
    elif key is None:
      raise ValueError("key: the layer has dropout and is in training mode, so a call needs a "
                       "jax.random key; pass key=, or inference=True (eqx.nn.inference_mode) "
                       "to evaluate")
    return layers.apply(self, self.params, xs, lengths, h0, key)

  def to_params(self) -> RNNParams:
    """The weights as a :class:`jaxrnn.RNNParams`, for the functional API:
    :func:`jaxrnn.generate`, :func:`jaxrnn.to_torch`, a checkpoint, ... (it is the ``params``
    field). Without a read-out, ``W_hy [0, D*H]`` and ``b_y [0]``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn.equinox
      >>> key = jax.random.key(0)
      >>> layer = jaxrnn.equinox.RNN(5, 8, 5, key=key)
      >>> jaxrnn.generate(layer.to_params(), key, jnp.array([1, 2]), 4, model=layer.model).shape
      (4,)
    """
    return self.params

  @classmethod
  def from_params(cls, params: RNNParams, **options: Any) -> "RNN":
    """A layer holding ``params`` (its sizes, layers, directions and dtype are theirs; an empty
    read-out, ``O = 0``, means none), with the constructor's other keyword ``options``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn.equinox
      >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
      >>> xs = jnp.ones((4, 7, 3))                                # [T, B, I]
      >>> layer = jaxrnn.equinox.RNN.from_params(params, activation="relu")
      >>> all(a is b for a, b in zip(jax.tree.leaves(layer.to_params()), jax.tree.leaves(params)))
      True
      >>> jnp.allclose(layer(xs)[0], jaxrnn.unroll(params, xs, model=layer.model).ys)
      Array(True, dtype=bool)
    """
    skeleton = eqx.filter_eval_shape(lambda: cls(**layers.sizes(params), **options,
                                                 key=jax.random.key(0)))
    return eqx.tree_at(lambda layer: layer.params, skeleton, params)
