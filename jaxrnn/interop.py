"""Parameters to and from ``torch.nn.RNN`` (and an ``nn.Linear`` readout).

torch's layer ``k`` computes ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``,
jaxrnn's recurrence in the same orientation: ``weight_ih_l{k}[_reverse]`` is
``layers[k][d].W_xh``, ``weight_hh_l{k}[_reverse]`` is ``W_hh`` and
``bias_ih + bias_hh`` is ``b_h`` (only the sum enters), ``d = 1`` for the
``_reverse`` keys; the directions concatenate, ``h_0``/``h_n`` are
``[L*D, B, H]`` and ``batch_first`` is :func:`jaxrnn.unroll_batch_first`, as
in jaxrnn. An ``nn.Linear(D*H, O)`` has ``weight = W_hy``, ``bias = b_y``.
torch is imported only by :func:`to_torch`.
"""

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import checks
from jaxrnn.pytrees import CellParams, RNNParams

_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)_l(0|[1-9]\d*)(_reverse)?")


def _to_numpy(name: str, tensor: Any) -> np.ndarray:
  """A torch tensor (any device, with or without grad) or array as a floating NumPy array
  (bfloat16 stays bfloat16: NumPy has no such type, ``ml_dtypes`` has)."""
  if isinstance(tensor, jax.core.Tracer):
    raise TypeError(f"{name} is traced: from_torch reads concrete weights, call it outside "
                    f"jax.jit")
  if hasattr(tensor, "detach"):
    tensor = tensor.detach().cpu()
    bfloat16 = str(tensor.dtype) == "torch.bfloat16"
    tensor = tensor.float().numpy().astype(jnp.bfloat16) if bfloat16 else tensor.numpy()
  array = np.asarray(tensor)
  if not jnp.issubdtype(array.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point tensor or array, got {array.dtype}")
  if array.ndim != (1 if "bias" in name else 2):
    raise ValueError(f"{name} must be a {'vector' if 'bias' in name else 'matrix'}, got shape "
                     f"{array.shape}")
  return array


def from_torch(state_dict: Mapping[str, Any], linear: Mapping[str, Any] | None = None,
               dtype: Any = None) -> RNNParams:
  """:class:`RNNParams` from a ``torch.nn.RNN`` state dict.

  Args:
    state_dict: ``rnn.state_dict()``; layers and directions are read off its
      keys; without bias keys (``bias=False``) ``b_h = 0``.
    linear: an ``nn.Linear(D*H, O)`` state dict for the readout; without it
      the readout is empty (``O = 0``).
    dtype: the dtype of the result; default the tensors' own.

  Raises:
    TypeError: not a mapping of floating-point tensors.
    ValueError: keys of an unsupported model (``proj_size``), missing layers
      or weights, or sizes that disagree (the message names the array).

  Example:
    >>> import torch, jaxrnn
    >>> rnn = torch.nn.RNN(3, 8, num_layers=2, bidirectional=True)
    >>> params = jaxrnn.from_torch(rnn.state_dict(), torch.nn.Linear(16, 2).state_dict())
    >>> params.layers[1][1].W_xh.shape, params.W_hy.shape
    ((8, 16), (2, 16))
  """
  for name, value in (("state_dict", state_dict), ("linear", {} if linear is None else linear)):
    if not isinstance(value, Mapping):
      raise TypeError(f"{name} must be a torch state dict (a mapping), got {type(value).__name__}")
  found: dict[tuple[int, int], dict[str, np.ndarray]] = {}
  for name, tensor in state_dict.items():
    match = _KEY.fullmatch(name)
    if match is None:
      raise ValueError(f"unsupported torch.nn.RNN state dict key {name!r}: expected "
                       f"weight_ih_l<k>, weight_hh_l<k>, bias_ih_l<k> or bias_hh_l<k>, each "
                       f"optionally _reverse (proj_size is not supported)")
    kind, layer, reverse = match.groups()
    found.setdefault((int(layer), int(reverse is not None)), {})[kind] = _to_numpy(name, tensor)
  num_layers = 1 + max(layer for layer, _ in found) if found else 0
  num_dirs = 1 + max(d for _, d in found) if found else 0
  if not found or set(found) != {(l, d) for l in range(num_layers) for d in range(num_dirs)}:
    raise ValueError(f"state dict must hold layers 0..L-1 in every direction, got {sorted(found)}")
  if any({"weight_ih", "weight_hh"} - set(arrays) for arrays in found.values()):
    raise ValueError("every layer needs weight_ih_l{k} and weight_hh_l{k}")
  if linear is not None and "weight" not in linear:
    raise ValueError("linear must hold the nn.Linear's 'weight' (and optionally 'bias')")
  dtype = checks.float_dtype("dtype", found[0, 0]["weight_ih"].dtype if dtype is None else dtype)

  for (l, d), arrays in found.items():
    hidden = arrays["weight_hh"].shape[0]
    for kind in ("bias_ih", "bias_hh"):
      if kind in arrays and arrays[kind].shape != (hidden,):
        raise ValueError(f"{kind}_l{l}{'_reverse' if d else ''} has shape {arrays[kind].shape}, "
                         f"but weight_hh_l{l}{'_reverse' if d else ''} says H={hidden}")

  def layer(arrays: dict[str, np.ndarray]) -> CellParams:
    zeros = np.zeros(arrays["weight_hh"].shape[0], arrays["weight_hh"].dtype)
    b_h = arrays.get("bias_ih", zeros) + arrays.get("bias_hh", zeros)
    return CellParams(W_xh=jnp.asarray(arrays["weight_ih"], dtype),
                       W_hh=jnp.asarray(arrays["weight_hh"], dtype), b_h=jnp.asarray(b_h, dtype))

  layers = tuple(tuple(layer(found[l, d]) for d in range(num_dirs)) for l in range(num_layers))
  if linear is None:
    width = num_dirs * layers[0][0].W_hh.shape[0]
    params = RNNParams(layers=layers, W_hy=jnp.zeros((0, width), dtype), b_y=jnp.zeros((0,), dtype))
  else:
    W_hy = jnp.asarray(_to_numpy("linear.weight", linear["weight"]), dtype)
    b_y = (jnp.asarray(_to_numpy("linear.bias", linear["bias"]), dtype) if "bias" in linear
           else jnp.zeros(W_hy.shape[:1], dtype))
    params = RNNParams(layers=layers, W_hy=W_hy, b_y=b_y)
  checks.check_params(params)
  return params


def to_torch(params: RNNParams) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(rnn_state_dict, linear_state_dict)`` of CPU tensors for ``nn.RNN(I, H, num_layers=L,
  bidirectional=D == 2)`` and ``nn.Linear(D*H, O)``; ``bias_ih`` gets ``b_h`` and ``bias_hh``
  zeros (only their sum enters). ``from_torch(*to_torch(params))`` gives back ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, torch, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 8, 2)
    >>> rnn_state, linear_state = jaxrnn.to_torch(params)
    >>> rnn, linear = torch.nn.RNN(3, 8), torch.nn.Linear(8, 2)
    >>> rnn.load_state_dict(rnn_state)
    <All keys matched successfully>
    >>> linear.load_state_dict(linear_state)
    <All keys matched successfully>
    >>> ys = linear(rnn(torch.ones(6, 4, 3))[0]).detach().numpy()      # [T, B, O]
    >>> jnp.allclose(ys, jaxrnn.unroll(params, jnp.ones((6, 4, 3))).ys, atol=1e-6)
    Array(True, dtype=bool)
  """
  import torch  # pylint: disable=import-outside-toplevel

  checks.check_params(params)
  if not checks.is_concrete(*jax.tree.leaves(params)):
    raise TypeError("params are traced: to_torch copies concrete weights, call it outside jax.jit")

  def tensor(a: jnp.ndarray) -> Any:
    if a.dtype == jnp.bfloat16:                       # NumPy's bfloat16 is not torch's
      return torch.from_numpy(np.asarray(a, np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(a))

  rnn: dict[str, Any] = {}
  for l, layer in enumerate(params.layers):
    for d, p in enumerate(layer):
      suffix = f"_l{l}" + ("_reverse" if d == 1 else "")
      rnn[f"weight_ih{suffix}"] = tensor(p.W_xh)
      rnn[f"weight_hh{suffix}"] = tensor(p.W_hh)
      rnn[f"bias_ih{suffix}"] = tensor(p.b_h)
      rnn[f"bias_hh{suffix}"] = tensor(jnp.zeros_like(p.b_h))
  return rnn, {"weight": tensor(params.W_hy), "bias": tensor(params.b_y)}
