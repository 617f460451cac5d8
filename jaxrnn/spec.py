"""The static options of a model, its loss and how it is computed: small hashable specs.

Each spec is a ``NamedTuple`` of Python scalars, so it can be a static
argument of ``jax.jit`` and travels as one value through every function:

* :class:`ModelSpec`: what the network computes (activations, dropout);
* :class:`LossSpec`: what training minimises;
* :class:`ComputeSpec`: how it is computed (gradient path, remat, precision),
  which changes speed and memory, never the numbers beyond float rounding.

The layers and directions of a model are not options: they are read off the
parameter pytree (:class:`jaxrnn.RNNParams`), as ``torch.nn.RNN``'s are off
its weights.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, get_args

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
REDUCTIONS: tuple[str, ...] = get_args(Reduction)
GRADIENTS: tuple[str, ...] = get_args(Gradient)
PRECISIONS: tuple[str, ...] = get_args(Precision)
RECURRENCES: tuple[str, ...] = get_args(Recurrence)
SCHEMES: tuple[str, ...] = get_args(Scheme)
LOSSES: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("identity", "softmax"),
    "squared_error": OUTPUT_ACTIVATION_NAMES,
}


class ModelSpec(NamedTuple):
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


class LossSpec(NamedTuple):
  """``L = sum_t w_t L_t(y_t, target_t)``.

  Attributes:
    loss: ``"cross_entropy"`` (integer class targets, output activation
      ``identity`` or ``softmax``) or ``"squared_error"`` (real targets, any
      output activation).
    reduction: ``"sum"`` (the seed's ``L``) or ``"mean"`` over live steps.
  """
  loss: Loss = "cross_entropy"
  reduction: Reduction = "sum"


class ComputeSpec(NamedTuple):
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
      (about 1e-3 relative error, faster). On a CPU both are exact. It
      overrides ``jax_default_matmul_precision`` inside jaxrnn's functions.
    recurrence: how the chain ``h_t = act(a_t + W_hh h_{t-1})`` and its
      hand-derived backward run with ``gradient="fused"``: ``"auto"`` (the
      persistent Pallas kernels of :mod:`jaxrnn.kernels` on a GPU when
      ``W_hh`` fits on chip, ``lax.scan`` otherwise), ``"scan"`` or
      ``"kernel"`` (forced; Pallas interpret mode off a GPU, slow, for tests).
      ``gradient="autodiff"`` always differentiates ``lax.scan``.
  """
  gradient: Gradient = "fused"
  scan_unroll: int = 1
  checkpoint_every: int | None = None
  dtype: Any = None
  precision: Precision = "highest"
  recurrence: Recurrence = "auto"
