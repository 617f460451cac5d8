"""jaxrnn as a Flax NNX layer: :class:`RNN`, an ``nnx.Module`` that runs :func:`jaxrnn.unroll`.

Needs Flax (``pip install -e ".[flax]"``); ``import jaxrnn`` does not import this module. The
layer's weights are ``nnx.Param``\\ s laid out as a :class:`jaxrnn.RNNParams` (so
``nnx.state(layer)`` has the paths ``params/layers/0/0/W_hh``, ..., ``params/W_hy``), its
gradient is jaxrnn's fused hand-derived BPTT, and its dropout draws from ``nnx.Rngs`` as
``nnx.Dropout`` does: ``model.eval()`` (or ``deterministic=True``) turns it off.
:meth:`RNN.to_params` and :meth:`RNN.from_params` convert to and from the functional API.
"""

from typing import Any

import jax
from flax import nnx

from jaxrnn import checks, layers
from jaxrnn.pytrees import RNNParams
from jaxrnn.spec import ComputeSpec, InitSpec, ModelSpec


def dropout_stream(rngs: nnx.Rngs | None, model: ModelSpec) -> nnx.RngStream | None:
  """A fork of ``rngs``' ``dropout`` stream for a layer with dropout, else ``None``."""
  if rngs is None or not layers.has_dropout(model):
    return None
  return rngs["dropout"].fork()


class RNN(nnx.Module):
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
    deterministic: no dropout (``model.eval()`` sets it, ``model.train()`` clears it).
    rngs: ``nnx.Rngs``; the weights draw from its ``params`` stream, dropout from a fork of
      its ``dropout`` stream (each falls back to ``default``).

  Example:
    >>> import jax.numpy as jnp, jaxrnn.nnx
    >>> from flax import nnx
    >>> layer = jaxrnn.nnx.RNN(3, 5, 2, num_layers=2, rngs=nnx.Rngs(0))
    >>> ys, final = layer(jnp.ones((4, 7, 3)))                   # xs [T, B, I]
    >>> ys.shape, final.shape
    ((4, 7, 2), (2, 7, 5))
    >>> layer.params.layers[1][0].W_xh.shape
    (5, 5)
  """

  def __init__(self, input_size: int, hidden_size: int, output_size: int | None = None, *,
               num_layers: int = 1, bidirectional: bool = False, activation: str = "tanh",
               output_activation: str = "identity", dropout: float = 0.0,
               input_dropout: float = 0.0, state_dropout: float = 0.0,
               init: InitSpec | str = InitSpec(), dtype: Any = None, batch_first: bool = False,
               compute: ComputeSpec = ComputeSpec(), deterministic: bool = False,
               rngs: nnx.Rngs):
    if not isinstance(rngs, nnx.Rngs):
      raise TypeError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}")
    model = layers.model_spec(activation, output_activation, dropout, input_dropout, state_dropout)
    params = layers.new_params(rngs.params(), input_size, hidden_size, output_size, num_layers,
                               bidirectional, init, dtype)
    self.shape = checks.check_params(params)
    layers.check_options(self.shape, model, compute, batch_first)
    if not isinstance(deterministic, bool):
      raise TypeError(f"deterministic must be a bool, got {deterministic!r}")
    self.model, self.compute = model, compute
    self.batch_first, self.deterministic = batch_first, deterministic
    self.params = nnx.data(jax.tree.map(nnx.Param, params))
    self.rngs = nnx.data(dropout_stream(rngs, model))

  def __call__(self, xs: jax.Array, lengths: jax.Array | None = None,
               h0: jax.Array | None = None, *, deterministic: bool | None = None,
               rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """``(ys [T, B, O] or, without a read-out, hs [T, B, D*H], final [L*D, B, H])``.

    Args:
      xs: ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``), in the weights' dtype.
      lengths: ``[B]`` in ``[0, T]``; outputs past a sequence's end are zero, its final
        state is its last live one. ``None``: all ``T``.
      h0: ``[L*D, B, H]`` (row ``l*D + d``), or ``None`` for zeros.
      deterministic: overrides the layer's (no dropout when true).
      rngs: where this call's dropout key comes from (``nnx.Rngs``, a stream or a key);
        ``None``: the stream forked from the constructor's ``rngs``.
    """
    deterministic = layers.no_dropout("deterministic", deterministic, self.deterministic)
    key = None
    if layers.has_dropout(self.model) and not deterministic:
      rngs = self.rngs if rngs is None else rngs
      if rngs is None:
        raise ValueError("rngs: the layer has dropout and is in training mode, but no nnx.Rngs "
                         "was passed to its constructor or this call; pass rngs=, or "
                         "deterministic=True (model.eval()) to evaluate")
      if isinstance(rngs, nnx.Rngs):
        key = rngs["dropout"]()
      elif isinstance(rngs, nnx.RngStream):
        key = rngs()
      else:
        checks.check_key("rngs", rngs)
        key = rngs
    return layers.apply(self, self.to_params(), xs, lengths, h0, key)

  def set_view(self, deterministic: bool | None = None):
    """For ``nnx.view``: ``deterministic=True`` turns dropout off, as ``nnx.Dropout``'s."""
    if deterministic is not None:
      self.deterministic = deterministic

  def to_params(self) -> RNNParams:
    """The weights as a :class:`jaxrnn.RNNParams` of arrays (not copies), for the functional
    API: :func:`jaxrnn.generate`, :func:`jaxrnn.to_torch`, a checkpoint, ... Without a
    read-out, ``W_hy [0, D*H]`` and ``b_y [0]``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn.nnx
      >>> from flax import nnx
      >>> key = jax.random.key(0)
      >>> layer = jaxrnn.nnx.RNN(5, 8, 5, rngs=nnx.Rngs(0))
      >>> jaxrnn.generate(layer.to_params(), key, jnp.array([1, 2]), 4, model=layer.model).shape
      (4,)
    """
    return jax.tree.map(lambda p: p[...], self.params,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))

  @classmethod
  def from_params(cls, params: RNNParams, *, rngs: nnx.Rngs | None = None,
                  **options: Any) -> "RNN":
    """A layer holding ``params`` (its sizes, layers, directions and dtype are theirs; an empty
    read-out, ``O = 0``, means none), with the constructor's other keyword ``options``.

    ``rngs``: for dropout (``None``: pass ``rngs`` to each training call, or evaluate).

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn.nnx
      >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
      >>> xs = jnp.ones((4, 7, 3))                                # [T, B, I]
      >>> layer = jaxrnn.nnx.RNN.from_params(params, activation="relu")
      >>> layer.to_params() is not params, jax.tree.all(jax.tree.map(jnp.array_equal,
      ...                                                 layer.to_params(), params))
      (True, True)
      >>> jnp.allclose(layer(xs)[0], jaxrnn.unroll(params, xs, model=layer.model).ys)
      Array(True, dtype=bool)
    """
    if rngs is not None and not isinstance(rngs, nnx.Rngs):
      raise TypeError(f"rngs must be an nnx.Rngs or None, got {type(rngs).__name__}")
    layer = nnx.eval_shape(lambda: cls(**layers.sizes(params), **options, rngs=nnx.Rngs(0)))
    layer.params = nnx.data(jax.tree.map(nnx.Param, params))
    layer.rngs = nnx.data(dropout_stream(rngs, layer.model))
    return layer

