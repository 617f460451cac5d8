"""What the Flax NNX and Equinox layers (:mod:`jaxrnn.nnx`, :mod:`jaxrnn.equinox`) share, without
importing either framework: checking the constructor's options, drawing the weights and one call.

A layer holds an :class:`jaxrnn.RNNParams`; a layer without a read-out (``output_size=None``)
holds an empty one, ``W_hy [0, D*H]`` and ``b_y [0]``, so every layer converts to and from
``RNNParams`` as it is. A call is :func:`jaxrnn.unroll` on those weights: the same forward body,
fused hand-derived gradient and dropout masks as the functional API.
"""

from typing import Any

import jax

from jaxrnn import checks
from jaxrnn.init import init_params
from jaxrnn.pytrees import RNNParams, Shape
from jaxrnn.spec import ComputeSpec, InitSpec, ModelSpec, check_specs
from jaxrnn.unroll import unroll, unroll_batch_first


def model_spec(activation: str, output_activation: str, dropout: float, input_dropout: float,
               state_dropout: float) -> ModelSpec:
  """The :class:`jaxrnn.ModelSpec` of a layer's options; a bad one raises a ``ValueError`` that
  names the layer's argument (``dropout``, not ``model.dropout``)."""
  try:
    return ModelSpec(activation, output_activation, dropout, input_dropout, state_dropout)
  except ValueError as error:
    raise ValueError(str(error).replace("model.", "", 1)) from None


def check_options(shape: Shape, model: ModelSpec, compute: Any, batch_first: Any) -> None:
  """Checks the options a layer keeps besides its weights (errors name the argument)."""
  check_specs(shape, model, None, compute)
  if not isinstance(batch_first, bool):
    raise TypeError(f"batch_first must be a bool, got {batch_first!r}")


def new_params(key: jax.Array, input_size: int, hidden_size: int, output_size: int | None,
               num_layers: int, bidirectional: bool, init: InitSpec | str, dtype: Any) -> RNNParams:
  """:func:`jaxrnn.init_params`; for ``output_size=None`` the same cells and an empty read-out."""
  if output_size is not None:
    checks.check_int("output_size", output_size)
  params = init_params(key, input_size, hidden_size, output_size or 1, num_layers=num_layers,
                       bidirectional=bidirectional, init=init, dtype=dtype)
  if output_size is None:
    params = params._replace(W_hy=params.W_hy[:0], b_y=params.b_y[:0])   # [0, D*H], [0]
  return params


def sizes(params: Any) -> dict[str, Any]:
  """The constructor's size arguments of a layer holding ``params`` (checked)."""
  shape = checks.check_params(params)
  return {"input_size": shape.input_size, "hidden_size": shape.hidden_size,
          "output_size": shape.output_size or None, "num_layers": shape.num_layers,
          "bidirectional": shape.num_directions == 2, "dtype": params.W_hy.dtype}


def no_dropout(name: str, value: bool | None, default: bool) -> bool:
  """A call's ``deterministic`` (Flax) or ``inference`` (Equinox) ``value``, the layer's
  ``default`` for ``None``; ``TypeError`` naming ``name`` for anything but a bool (a string such
  as ``"no"`` would be true)."""
  if value is None:
    return default
  if not isinstance(value, bool):
    raise TypeError(f"{name} must be a bool or None, got {value!r}")
  return value


def has_dropout(model: ModelSpec) -> bool:
  """Whether any dropout rate of ``model`` is above 0 (a training call then needs randomness)."""
  return bool(model.dropout or model.input_dropout or model.state_dropout)


def apply(layer: Any, params: RNNParams, xs: jax.Array, lengths: jax.Array | None,
          h0: jax.Array | None, key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """One call of ``layer`` (an :mod:`jaxrnn.nnx` or :mod:`jaxrnn.equinox` ``RNN``: its ``shape``,
  ``model``, ``compute`` and ``batch_first``) on its weights ``params``: ``(ys or hs, final
  [L*D, B, H])``.

  ``xs [T, B, I]`` (``[B, T, I]`` when ``batch_first``) gives ``ys [T, B, O]`` with a
  read-out, else ``hs [T, B, D*H]`` (batch first likewise); the rest is :func:`jaxrnn.unroll`.
  """
  shape = checks.check_params(params)
  if shape != layer.shape:
    raise ValueError(f"the layer was built for {layer.shape} but holds weights of {shape}: it "
                     f"was given another layer's state")
  run = unroll_batch_first if layer.batch_first else unroll
  hs, ys, final = run(params, xs, h0, lengths, model=layer.model, compute=layer.compute, key=key)
  return (ys if shape.output_size else hs), final
