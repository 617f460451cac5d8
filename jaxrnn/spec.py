"""The static options of a model, its loss, how it is computed and how it starts: small specs.

Each spec is a frozen dataclass of Python scalars: hashable, so it can be a
static argument of ``jax.jit``, and checked field by field when it is built,
so a bad option fails where it is written, with a ``ValueError`` or
``TypeError`` that names it. Change a field with ``dataclasses.replace``.

* :class:`ModelSpec`: what the network computes (activations, dropout);
* :class:`LossSpec`: what training minimises;
* :class:`ComputeSpec`: how it is computed (gradient path, remat, precision),
  which changes speed and memory, never the numbers beyond float rounding;
* :class:`InitSpec`: how :func:`jaxrnn.init_params` draws the weights.

The layers and directions of a model are not options: they are read off the
parameter pytree (:class:`jaxrnn.RNNParams`), as ``torch.nn.RNN``'s are off
its weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp

from jaxrnn import checks
from jaxrnn.pytrees import Shape

Activation = Literal["tanh", "relu"]
OutputActivation = Literal["identity", "sigmoid", "tanh", "softmax"]
Loss = Literal["cross_entropy", "squared_error"]
Reduction = Literal["sum", "mean"]
Gradient = Literal["fused", "autodiff", "bptt"]
Precision = Literal["highest", "default"]
Recurrence = Literal["auto", "scan", "kernel"]
Scheme = Literal["normal", "glorot", "orthogonal", "identity"]

ACTIVATION_NAMES: tuple[str, ...] = get_args(Activation)
OUTPUT_ACTIVATION_NAMES: tuple[str, ...] = get_args(OutputActivation)
GRADIENTS: tuple[str, ...] = get_args(Gradient)
SCHEMES: tuple[str, ...] = get_args(Scheme)
LOSSES: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("identity", "softmax"),
    "squared_error": OUTPUT_ACTIVATION_NAMES,
}
"""Each loss and the output activations it accepts."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the network computes, besides its parameters.

  Attributes:
    activation: ``act`` in ``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``.
    output_activation: ``out_act`` in ``y_t = out_act(W_hy h_t + b_y)``.
    dropout: torch's ``nn.RNN(dropout=p)``: on every layer's output except
      the last, a fresh mask per step.
    input_dropout: variational dropout (Gal & Ghahramani, 2016) on every
      layer's input: one ``[B, I_l]`` mask per layer and direction, the same
      at every step.
    state_dropout: variational dropout on ``h_{t-1}`` in ``W_hh h_{t-1}``:
      one ``[H]`` mask per layer and direction, the same at every step and
      for the whole batch (``W_hh diag(m)``, so the hand BPTT still applies).

  Dropout is applied only where a ``key`` is passed; without one (evaluation)
  the rates are ignored.
  """
  activation: Activation = "tanh"
  output_activation: OutputActivation = "identity"
  dropout: float = 0.0
  input_dropout: float = 0.0
  state_dropout: float = 0.0

  def __post_init__(self):
    checks.check_choice("model.activation", self.activation, ACTIVATION_NAMES)
    checks.check_choice("model.output_activation", self.output_activation,
                        OUTPUT_ACTIVATION_NAMES)
    for name in ("dropout", "input_dropout", "state_dropout"):
      checks.check_rate(f"model.{name}", getattr(self, name))


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """``L = sum_t w_t L_t(y_t, target_t)``.

  Attributes:
    loss: ``"cross_entropy"`` (integer class targets, output activation
      ``identity`` or ``softmax``) or ``"squared_error"`` (real targets, any
      output activation).
    reduction: ``"sum"`` (the seed's ``L``) or ``"mean"`` over live steps.
  """
  loss: Loss = "cross_entropy"
  reduction: Reduction = "sum"

  def __post_init__(self):
    checks.check_choice("loss.loss", self.loss, LOSSES)
    checks.check_choice("loss.reduction", self.reduction, get_args(Reduction))


@dataclasses.dataclass(frozen=True)
class ComputeSpec:
  """How the forward and backward passes run; never what they compute.

  Attributes:
    gradient: ``"fused"`` (``jax.grad`` through the hand-derived BPTT of each
      layer, the fast default), ``"autodiff"`` (``jax.grad`` through
      ``lax.scan``) or ``"bptt"`` (the hand-derived oracle
      :func:`jaxrnn.bptt`, for training steps only).
    scan_unroll: time steps per ``lax.scan`` iteration.
    checkpoint_every: ``None``, or a chunk length ``k``: keep only every
      ``k``-th state and recompute the rest in the backward pass (memory
      ``~T/k + k``; unidirectional models).
    dtype: e.g. ``"bfloat16"``: the layers run in this dtype, the readout,
      loss and gradients stay in the params' dtype; ``None``: the params'.
    precision: of every matmul of the forward and backward pass (input
      projection, recurrence, read-out, weight gradients, and the kernels'
      ``dot``): ``"highest"`` (the default) is exact float32; ``"default"``
      is JAX's ``Precision.DEFAULT``, TF32 on NVIDIA GPUs since Ampere
      (faster, about 1e-3 relative error). On a CPU both are exact.
    recurrence: how the chain ``h_t = act(a_t + W_hh h_{t-1})`` and its
      hand-derived backward run with ``gradient="fused"``, and the forward
      chain everywhere: ``"auto"`` (the persistent Pallas kernels of
      :mod:`jaxrnn.kernels` on a GPU when ``W_hh`` fits on chip,
      ``lax.scan`` otherwise), ``"scan"`` or ``"kernel"`` (forced; Pallas
      interpret mode off a GPU, slow, for tests).
  """
  gradient: Gradient = "fused"
  scan_unroll: int = 1
  checkpoint_every: int | None = None
  dtype: Any = None
  precision: Precision = "highest"
  recurrence: Recurrence = "auto"

  def __post_init__(self):
    checks.check_choice("compute.gradient", self.gradient, GRADIENTS)
    checks.check_positive_int("compute.scan_unroll", self.scan_unroll)
    checks.check_choice("compute.precision", self.precision, get_args(Precision))
    checks.check_choice("compute.recurrence", self.recurrence, get_args(Recurrence))
    if self.recurrence == "kernel" and self.gradient != "fused":
      raise ValueError(f"compute.recurrence='kernel' needs gradient='fused' (the kernels run the "
                       f"hand-derived backward; {self.gradient!r} differentiates lax.scan)")
    if self.checkpoint_every is not None:
      checks.check_positive_int("compute.checkpoint_every", self.checkpoint_every)
    if self.dtype is not None:
      try:
        dtype = jnp.dtype(self.dtype)
      except TypeError:
        raise TypeError(f"compute.dtype must be a floating-point dtype, got {self.dtype!r}") from None
      if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"compute.dtype must be a floating-point dtype, got {dtype}")


@dataclasses.dataclass(frozen=True)
class InitSpec:
  """How :func:`jaxrnn.init_params` draws the weights; biases always start at zero.

  Attributes:
    scheme: ``"normal"``: every weight ``~ N(0, scale^2)`` (the seed's
      ``np.random.randn(...) * 0.01``); ``"glorot"``: Glorot/Xavier-uniform
      (Glorot & Bengio, 2010); ``"orthogonal"``: ``W_hh = scale * Q`` with
      ``Q`` random orthogonal (Saxe et al., 2014), the other weights Glorot;
      ``"identity"``: the IRNN of Le, Jaitly & Hinton (2015), meant for
      ReLU: ``W_hh = scale * I``, the other weights ``~ N(0, 0.001^2)``.
    scale: ``None`` for the scheme's default (0.01 for ``"normal"``, 1 for
      ``"orthogonal"`` and ``"identity"``), or a finite number ``> 0``;
      ``"glorot"`` takes none.
  """
  scheme: Scheme = "normal"
  scale: float | None = None

  def __post_init__(self):
    checks.check_choice("init.scheme", self.scheme, SCHEMES)
    if self.scale is not None:
      checks.check_positive_number("init.scale", self.scale)
      if self.scheme == "glorot":
        raise ValueError("init.scale: the 'glorot' scheme has no scale")


def check_specs(shape: Shape | None, model: Any, loss: Any = None, compute: Any = None) -> None:
  """Checks the types of the specs an entry point was given, and that they suit each other.

  Raises:
    TypeError: a spec of the wrong type (e.g. a ``dict``).
    ValueError: an output activation the loss does not accept, or
      ``compute.checkpoint_every`` for a bidirectional model of ``shape``.
  """
  checks.check_type("model", model, ModelSpec)
  if loss is not None:
    checks.check_type("loss", loss, LossSpec)
    if model.output_activation not in LOSSES[loss.loss]:
      raise ValueError(f"loss {loss.loss!r} does not accept model.output_activation "
                       f"{model.output_activation!r}; use one of {list(LOSSES[loss.loss])}")
  if compute is not None:
    checks.check_type("compute", compute, ComputeSpec)
    if compute.checkpoint_every is not None and shape is not None:
      checks.check_unidirectional(shape, "compute.checkpoint_every", "it runs time in chunks, "
                                  "one after another, and a bidirectional model reads the whole "
                                  "sequence")


def precision_scope(compute: ComputeSpec):
  """``jax.default_matmul_precision(compute.precision)`` for the code traced inside.

  Every matmul of the forward and backward pass runs in it; it overrides
  ``jax_default_matmul_precision`` inside jaxrnn's functions.
  """
  return jax.default_matmul_precision(compute.precision)
