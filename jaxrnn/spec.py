"""The static options of a model (:class:`ModelSpec`), its loss (:class:`LossSpec`), how it is
computed (:class:`ComputeSpec`: speed and memory, never the numbers beyond rounding) and how
it starts (:class:`InitSpec`).

Each spec is a frozen dataclass of Python scalars: hashable, so it can be a
static argument of ``jax.jit``, and checked when it is built, so a bad option
fails where it is written, with an error that names it. Change a field with
``dataclasses.replace``. The layers and directions of a model are not
options: they are read off the parameters, as ``torch.nn.RNN``'s are.
"""

import dataclasses
import math
from typing import Any, Literal, get_args

import jax

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

ACTIVATION_NAMES, GRADIENTS, SCHEMES = get_args(Activation), get_args(Gradient), get_args(Scheme)
LOSSES = {"cross_entropy": ("identity", "softmax"), "squared_error": get_args(OutputActivation)}
"""Each loss and the output activations it accepts."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the network computes, besides its parameters.

  Attributes:
    activation: ``act`` in ``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``.
    output_activation: ``out_act`` in ``y_t = out_act(W_hy h_t + b_y)``.
    dropout: torch's ``nn.RNN(dropout=p)`` on every layer's output but the last.
    input_dropout: variational dropout (Gal & Ghahramani, 2016) on every
      layer's input: one ``[B, I_l]`` mask per cell, the same at every step.
    state_dropout: variational dropout on ``h_{t-1}``: one ``[H]`` mask per
      cell for all steps and sequences (``W_hh diag(m)``).

  Dropout applies only where a ``key`` is passed (not in evaluation).

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> model = jaxrnn.ModelSpec(activation="relu", output_activation="sigmoid")
    >>> ys = jaxrnn.unroll(params, jnp.ones((4, 7, 3)), model=model).ys
    >>> bool(((ys > 0) & (ys < 1)).all())                           # sigmoid outputs
    True
    >>> jaxrnn.ModelSpec(dropout=1.5)
    Traceback (most recent call last):
    ...
    ValueError: model.dropout must be a finite number in [0, 1), got 1.5
  """
  activation: Activation = "tanh"
  output_activation: OutputActivation = "identity"
  dropout: float = 0.0
  input_dropout: float = 0.0
  state_dropout: float = 0.0

  def __post_init__(self):
    checks.check_choice("model.activation", self.activation, ACTIVATION_NAMES)
    checks.check_choice("model.output_activation", self.output_activation,
                        get_args(OutputActivation))
    for name in ("dropout", "input_dropout", "state_dropout"):
      checks.check_real(f"model.{name}", getattr(self, name), 0, 1)


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """``L = sum_t w_t L_t(y_t, target_t)``.

  Attributes:
    loss: ``"cross_entropy"`` (class targets) or ``"squared_error"`` (real targets).
    reduction: ``"sum"`` (the seed's ``L``) or ``"mean"`` over live steps.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> batch = jaxrnn.Batch(jnp.ones((6, 4, 3)), jnp.full((6, 4, 2), 0.5))  # targets [T, B, O]
    >>> total, _ = jaxrnn.sequence_loss(params, batch, loss=jaxrnn.LossSpec("squared_error"))
    >>> mean, _ = jaxrnn.sequence_loss(params, batch,
    ...                                loss=jaxrnn.LossSpec("squared_error", "mean"))
    >>> jnp.allclose(total, 24 * mean)                               # T B = 24 live steps
    Array(True, dtype=bool)
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
    gradient: ``"fused"`` (``jax.grad`` through each layer's hand-derived
      BPTT, the default), ``"autodiff"`` (through ``lax.scan``) or ``"bptt"``
      (the oracle :func:`jaxrnn.bptt`, for training steps).
    scan_unroll: time steps per ``lax.scan`` iteration.
    checkpoint_every: ``"auto"`` (the default: :func:`resolve_checkpoint`
      picks ``None`` or ``k`` from the sizes and the device's memory),
      ``None`` (store every state), or ``k``: keep every ``k``-th state and
      recompute the rest backward (memory ``~T/k + k``; unidirectional models).
    dtype: e.g. ``"bfloat16"``, the layers' dtype (read-out, loss and
      gradients stay in the params'); ``None``: the params'.
    precision: of every matmul, forward and backward: ``"highest"`` (exact
      float32) or ``"default"`` (TF32 on NVIDIA GPUs, faster, ~1e-3 relative
      error); on a CPU both are exact.
    recurrence: how the chain runs, forward and (``"fused"``) backward:
      ``"auto"`` (the Pallas kernels of :mod:`jaxrnn.kernels` on a GPU where
      ``W_hh`` fits on chip, else ``lax.scan``), ``"scan"`` or ``"kernel"``
      (interpret mode off a GPU: slow, for tests).

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> batch = jaxrnn.Batch(jnp.ones((6, 4, 3)), jnp.ones((6, 4), int))
    >>> compute = jaxrnn.ComputeSpec(gradient="autodiff", checkpoint_every=2)
    >>> _, grads = jaxrnn.loss_and_grad(params, batch, compute=compute)
    >>> _, default = jaxrnn.loss_and_grad(params, batch)             # fused, "auto"
    >>> jax.tree.all(jax.tree.map(jnp.allclose, grads, default))     # the same numbers
    True
  """
  gradient: Gradient = "fused"
  scan_unroll: int = 1
  checkpoint_every: int | Literal["auto"] | None = "auto"
  dtype: Any = None
  precision: Precision = "highest"
  recurrence: Recurrence = "auto"

  def __post_init__(self):
    checks.check_choice("compute.gradient", self.gradient, GRADIENTS)
    checks.check_int("compute.scan_unroll", self.scan_unroll)
    checks.check_choice("compute.precision", self.precision, get_args(Precision))
    checks.check_choice("compute.recurrence", self.recurrence, get_args(Recurrence))
    if self.recurrence == "kernel" and self.gradient != "fused":
      raise ValueError(f"compute.recurrence='kernel' needs gradient='fused' (the kernels run the "
                       f"hand-derived backward; {self.gradient!r} differentiates lax.scan)")
    if self.checkpoint_every not in (None, "auto"):
      checks.check_int("compute.checkpoint_every", self.checkpoint_every)
    if self.dtype is not None:
      checks.float_dtype("compute.dtype", self.dtype)


@dataclasses.dataclass(frozen=True)
class InitSpec:
  """How :func:`jaxrnn.init_params` draws the weights; biases always start at zero.

  Attributes:
    scheme: ``"normal"``: every weight ``~ N(0, scale^2)`` (the seed's
      ``randn * 0.01``); ``"glorot"``: Glorot-uniform (Glorot & Bengio, 2010);
      ``"orthogonal"``: ``W_hh = scale * Q``, ``Q`` random orthogonal (Saxe et
      al., 2014), the rest Glorot; ``"identity"``: the IRNN (Le, Jaitly &
      Hinton, 2015; for ReLU): ``W_hh = scale * I``, the rest ``~ N(0, 0.001^2)``.
    scale: ``None`` for the default (0.01 for ``"normal"``, else 1), or a
      finite number ``> 0``; ``"glorot"`` takes none.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> irnn = jaxrnn.InitSpec("identity", scale=0.5)
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2, init=irnn)
    >>> jnp.array_equal(params.layers[0][0].W_hh, 0.5 * jnp.eye(5))
    Array(True, dtype=bool)
  """
  scheme: Scheme = "normal"
  scale: float | None = None

  def __post_init__(self):
    checks.check_choice("init.scheme", self.scheme, SCHEMES)
    if self.scale is not None:
      checks.check_real("init.scale", self.scale)
      if self.scheme == "glorot":
        raise ValueError("init.scale: the 'glorot' scheme has no scale")


PLAIN = ComputeSpec(gradient="autodiff", recurrence="scan")
"""``lax.scan`` and its autodiff: the path the hand-derived BPTT and the diagnostics trace."""


def check_specs(shape: Shape | None, model: Any, loss: Any = None, compute: Any = None) -> None:
  """Raises ``TypeError`` for a spec of the wrong type, ``ValueError`` for specs that do not
  suit each other or the model of ``shape`` (e.g. an output activation the loss refuses)."""
  checks.check_type("model", model, ModelSpec)
  if loss is not None:
    checks.check_type("loss", loss, LossSpec)
    if model.output_activation not in LOSSES[loss.loss]:
      raise ValueError(f"loss {loss.loss!r} does not accept model.output_activation "
                       f"{model.output_activation!r}; use one of {list(LOSSES[loss.loss])}")
  if compute is not None:
    checks.check_type("compute", compute, ComputeSpec)
    if compute.checkpoint_every not in (None, "auto") and shape is not None:
      checks.check_unidirectional(shape, "compute.checkpoint_every", "it runs time in chunks, "
                                  "one after another, and a bidirectional model reads the whole "
                                  "sequence")


STATES_PER_CELL = 3
"""``[T, B, H]`` arrays of each cell that a gradient step over a whole sequence needs at its
peak: the states, their gradient ``dL/dh_t`` and ``delta_t``. XLA's temp of the fused step
holds about 4.5 (a transposed copy of ``delta`` and the shifted states too;
``benchmarks/scaling.py``), which :data:`FUSED_MEMORY_SHARE` absorbs."""
FUSED_STEPS_LIMIT = 512
"""``T`` above which the chunked step is faster than the fused one (its chunks stay in cache).
Measured on a 2-core Xeon (B = 16, I = 32, H = 128, float32, interleaved): chunked / fused
time 1.16 at T = 500, 0.83 at T = 600, 0.54 at T = 1,000. Past it, a fused step that
stores every state runs in chunks too (:func:`fused_chunk`)."""
FUSED_MEMORY_SHARE = 0.5
"""The share of the device's memory the fused step may take before the chunked one is chosen."""
FUSED_CHUNK = 64
"""The most steps per chunk of a fused step past :data:`FUSED_STEPS_LIMIT` (:func:`fused_chunk`).
Measured as :data:`FUSED_STEPS_LIMIT` (B = 16 and 32, T = 1,000 and 3,000): chunks of 32 to 128
take 0.7 to 0.9 of the unchunked step's CPU time; XLA's temp is about ``T B H`` plus a copy of
the inputs plus a share ``~ 4 FUSED_CHUNK / T`` more."""


def fused_chunk(shape: Shape, num_steps: int, gradient: Gradient = "fused") -> int | None:
  """Steps per chunk of a gradient step that stores every state, or ``None``.

  ``None`` (the whole sequence at once) unless ``gradient == "fused"``, for a
  bidirectional model and where ``T <= FUSED_STEPS_LIMIT``; else the step
  stores every layer's states but runs the read-out, the loss and the backward
  recursion chunk by chunk
  (:func:`jaxrnn.losses.chunked_loss` with ``keep_states``), so the gradient
  reaching the states, ``delta`` and the logits never exist for all ``T`` at
  once: chunks of ``ceil(T / ceil(T / FUSED_CHUNK)) <= FUSED_CHUNK`` steps, the
  fewest with the least padding.
  """
  if gradient != "fused" or shape.num_directions == 2 or num_steps <= FUSED_STEPS_LIMIT:
    return None
  return -(-num_steps // -(-num_steps // FUSED_CHUNK))


def step_memory(shape: Shape, num_steps: int, batch: int, itemsize: int,
                checkpoint_every: int | None, training: bool = True,
                gradient: Gradient = "fused") -> int:
  """Bytes a step of ``T = num_steps`` by ``B = batch`` sequences holds at its peak, roughly.

  ``itemsize * (n P + T B (I + O) + activations)``: the ``P`` parameters
  (``n = 4`` in training: their gradient and Adam's two moments; 1 otherwise),
  the data, and

  * forward only (``training=False``): ``T B (L D H + O)``, every layer's states and the logits;
  * ``checkpoint_every=None``: ``T B (3 L D H + 2 O)``
    (:data:`STATES_PER_CELL` arrays per cell, the logits and their gradient), or where
    the step of ``gradient`` runs in chunks of ``c`` (:func:`fused_chunk`) ``T B L D H`` for
    the states, one chunk's ``c B (3 L D H + 2 O)`` and ``T B (I + O)`` for the padded
    chunks of data;
  * ``checkpoint_every=k``: ``ceil(T/k) B L D H`` for the kept states, one
    chunk's ``k B (3 L D H + 2 O)`` and ``T B (I + O)`` for the padded chunks of data.
  """
  hidden, width = shape.hidden_size, shape.num_directions * shape.hidden_size
  inputs, outputs, cells = shape.input_size, shape.output_size, shape.num_layers * shape.num_directions
  num_params = (cells * hidden * (hidden + 1) + shape.num_directions * hidden
                * (inputs + (shape.num_layers - 1) * width) + outputs * (width + 1))
  data = num_steps * batch * (inputs + outputs)
  per_step = batch * (STATES_PER_CELL * cells * hidden + 2 * outputs)
  chunk = fused_chunk(shape, num_steps, gradient) if checkpoint_every is None else checkpoint_every
  if not training:
    activations = num_steps * batch * (cells * hidden + outputs)
  elif chunk is None:
    activations = num_steps * per_step
  else:
    kept = num_steps if checkpoint_every is None else -(-num_steps // checkpoint_every)
    activations = kept * batch * cells * hidden + chunk * per_step + data
  return itemsize * ((4 if training else 1) * num_params + data + activations)


def resolve_checkpoint(compute: ComputeSpec, shape: Shape, num_steps: int, batch: int,
                       itemsize: int) -> int | None:
  """The ``checkpoint_every`` a gradient step of ``T = num_steps`` by ``B = batch`` runs with.

  An int or ``None`` in ``compute.checkpoint_every`` is kept. ``"auto"`` resolves, at trace
  time from the static sizes and :func:`jaxrnn.checks.device_memory`, to

  * ``None`` (store every state) for a bidirectional model or ``gradient="bptt"``, which
    cannot run in chunks, and where ``T <= FUSED_STEPS_LIMIT`` (beyond it the chunked step
    is faster) and the whole step (:func:`step_memory`) takes at most
    :data:`FUSED_MEMORY_SHARE` of the device's memory;
  * else ``k = ceil(sqrt(T))``, the ``k`` of least memory, ``~2 sqrt(T)`` states per layer.
  """
  if compute.checkpoint_every != "auto":
    return compute.checkpoint_every
  if shape.num_directions == 2 or compute.gradient == "bptt":
    return None
  fused = step_memory(shape, num_steps, batch, itemsize, None)
  if num_steps <= FUSED_STEPS_LIMIT and fused <= FUSED_MEMORY_SHARE * checks.device_memory():
    return None
  return math.isqrt(num_steps - 1) + 1 if num_steps > 1 else 1


def precision_scope(compute: ComputeSpec):
  """``jax.default_matmul_precision(compute.precision)``: every matmul of jaxrnn runs in it."""
  return jax.default_matmul_precision(compute.precision)
