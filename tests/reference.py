"""An independent NumPy reference of the jaxrnn model: the oracle the tests compare against.

float64 NumPy and plain Python loops over time; it imports neither ``jax`` nor
``jaxrnn``. Parameters are nested tuples (NamedTuples such as
``jaxrnn.RNNParams`` included, after :func:`as_numpy`):
``params = (layers, W_hy [O, D*H], b_y [O])`` with
``layers[l][d] = (W_xh [H, I_l], W_hh [H, H], b_h [H])``.

Layer ``l`` direction ``d`` runs ``h_t = act(W_xh x^l_t + W_hh h_{t-1} + b_h)``,
direction 1 reading time backwards; ``x^{l+1}_t = [h^{l,0}_t; h^{l,1}_t]``,
``z_t = W_hy x^L_t + b_y``, ``y_t = out_act(z_t)``. Steps ``t >= lengths[b]``
are dead (torch's packed sequences): the state holds, every layer's output and
``y_t`` are zero, the loss weight is zero. ``h0`` rows are ordered ``l*D + d``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Tree = Any  # nested tuples (NamedTuples too) of arrays
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "relu": lambda a: np.maximum(a, 0.0),
}


def softmax(z: np.ndarray) -> np.ndarray:
  """Softmax over the last axis, shifted by the max (stable)."""
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
  """``log softmax(z)`` over the last axis, stable."""
  s = z - z.max(-1, keepdims=True)
  return s - np.log(np.exp(s).sum(-1, keepdims=True))


OUTPUT_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda z: z,
    "sigmoid": lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)),  # no overflow for large |z|
    "tanh": np.tanh,
    "softmax": softmax,
}


def act_derivative(activation: str, h: np.ndarray) -> np.ndarray:
  """``act'`` in terms of the output ``h = act(a)``: tanh ``1 - h^2``, relu ``[h > 0]``."""
  return 1.0 - h * h if activation == "tanh" else (h > 0).astype(np.float64)


def _like(template: Tree, children: Sequence[Any]) -> Tree:
  """``children`` in ``template``'s tuple type (a NamedTuple stays one, a list becomes a tuple)."""
  return type(template)(*children) if hasattr(template, "_fields") else tuple(children)


def tree_map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
  """``fn`` over the leaves (non-tuple entries) of ``tree`` and equally nested ``rest``."""
  if isinstance(tree, (tuple, list)):
    return _like(tree, [tree_map(fn, *parts) for parts in zip(tree, *rest)])
  return fn(tree, *rest)


def as_numpy(params: Tree) -> Tree:
  """Every leaf of a nested tuple structure (e.g. a ``jaxrnn.RNNParams``) as a float64 ndarray."""
  return tree_map(lambda a: np.asarray(a, np.float64), params)


def live_mask(lengths: Any, num_steps: int, batch: int) -> np.ndarray:
  """``[T, B]`` of 1.0/0.0: step ``t`` of sequence ``b`` is live iff ``t < lengths[b]``."""
  if lengths is None:
    return np.ones((num_steps, batch))
  return (np.arange(num_steps)[:, None] < np.asarray(lengths)[None, :]).astype(np.float64)


def initial_states(params: Tree, h0: Any, batch: int) -> np.ndarray:
  """``h0`` as float64 ``[L*D, B, H]``; zeros when None."""
  layers = params[0]
  if h0 is None:
    return np.zeros((len(layers) * len(layers[0]), batch, np.shape(layers[0][0][1])[0]))
  return np.asarray(h0, np.float64)


def forward(params: Tree, xs: Any, h0: Any = None, lengths: Any = None,
            activation: str = "tanh") -> tuple[np.ndarray, tuple, np.ndarray, tuple]:
  """The layers of the model, one time step at a time.

  Args: ``xs [T, B, I]``, ``h0 [L*D, B, H]`` (zeros if None), ``lengths [B]`` (all T if None).

  Returns:
    ``(top [T, B, D*H], states, final [L*D, B, H], inputs)``: ``top`` is zero at dead
    steps; ``states[l][d]`` is that cell's ``h_t`` in time order, ``[T, B, H]``, held at
    dead steps (direction 0: the last live state; direction 1: ``h0``); ``final`` is the
    state after each direction's last live step (``h0`` for length 0); ``inputs[l]`` is
    ``x^l [T, B, I_l]``, the input layer ``l`` read.
  """
  params = as_numpy(params)
  layers = params[0]
  x = np.asarray(xs, np.float64)                                        # [T, B, I]
  num_steps, batch = x.shape[:2]
  num_dirs, hidden = len(layers[0]), np.shape(layers[0][0][1])[0]
  h0 = initial_states(params, h0, batch)                                # [L*D, B, H]
  live = live_mask(lengths, num_steps, batch)[..., None] > 0            # [T, B, 1]
  act = ACTIVATIONS[activation]
  inputs, states, finals = [], [], []
  for l, layer in enumerate(layers):
    inputs.append(x)
    cells = []
    for d, (W_xh, W_hh, b_h) in enumerate(layer):
      h = h0[l * num_dirs + d]                                          # [B, H]
      hs = np.zeros((num_steps, batch, hidden))
      for t in (range(num_steps) if d == 0 else reversed(range(num_steps))):
        h = np.where(live[t], act(x[t] @ W_xh.T + h @ W_hh.T + b_h), h)
        hs[t] = h
      cells.append(hs)
      finals.append(h)
    states.append(tuple(cells))
    x = np.where(live, np.concatenate(cells, axis=-1), 0.0)             # [T, B, D*H]
  return x, tuple(states), np.stack(finals), tuple(inputs)


def logits(params: Tree, top: np.ndarray) -> np.ndarray:
  """``z = W_hy top + b_y``; ``[T, B, D*H] -> [T, B, O]``."""
  return top @ np.asarray(params[1], np.float64).T + np.asarray(params[2], np.float64)


def readout(params: Tree, top: np.ndarray, output_activation: str = "identity",
            lengths: Any = None) -> np.ndarray:
  """``y = out_act(W_hy top + b_y)``, ``[T, B, O]``, zero at steps ``t >= lengths[b]``."""
  y = OUTPUT_ACTIVATIONS[output_activation](logits(params, top))
  return np.where(live_mask(lengths, *top.shape[:2])[..., None] > 0, y, 0.0)


def loss_weights(lengths: Any, target_mask: Any, num_steps: int, batch: int,
                 reduction: str) -> np.ndarray:
  """``w [T, B]``: live times ``target_mask``; divided by ``max(sum w, 1)`` for ``"mean"``."""
  w = live_mask(lengths, num_steps, batch)
  if target_mask is not None:
    w = w * np.asarray(target_mask, np.float64)
  return w / max(w.sum(), 1.0) if reduction == "mean" else w


def step_losses(z: np.ndarray, targets: Any, loss: str, output_activation: str) -> np.ndarray:
  """``L_t [T, B]`` from ``z [T, B, O]``; a class index outside ``[0, O)`` gives NaN."""
  if loss == "cross_entropy":
    if output_activation not in ("identity", "softmax"):
      raise ValueError(f"cross_entropy needs identity or softmax, not {output_activation!r}")
    targets = np.asarray(targets)                                       # [T, B] ints
    valid = (targets >= 0) & (targets < z.shape[-1])
    picked = np.take_along_axis(log_softmax(z), np.clip(targets, 0, z.shape[-1] - 1)[..., None],
                                axis=-1)[..., 0]
    return np.where(valid, -picked, np.nan)
  y = OUTPUT_ACTIVATIONS[output_activation](z)
  return np.sum((y - np.asarray(targets, np.float64)) ** 2, axis=-1)


def loss(params: Tree, xs: Any, targets: Any, h0: Any = None, lengths: Any = None,
         target_mask: Any = None, activation: str = "tanh", output_activation: str = "identity",
         loss: str = "cross_entropy", reduction: str = "sum") -> tuple[float, np.ndarray]:
  """``(L = sum_{t,b} w L_t, final [L*D, B, H])``, ``w`` of :func:`loss_weights`.

  ``xs [T, B, I]``; ``targets [T, B]`` ints (cross_entropy, from the logits ``z`` whether
  the output activation is identity or softmax) or ``[T, B, O]`` (squared_error,
  ``sum_o (y - target)^2``); ``target_mask [T, B]`` or None. A zero-weight term is
  exactly 0, even if its ``L_t`` is NaN.
  """
  top, _, final, _ = forward(params, xs, h0, lengths, activation)
  w = loss_weights(lengths, target_mask, *top.shape[:2], reduction)     # [T, B]
  losses = step_losses(logits(params, top), targets, loss, output_activation)
  return float(np.sum(w * np.where(w != 0, losses, 0.0))), final


def output_delta(z: np.ndarray, targets: Any, loss: str, output_activation: str) -> np.ndarray:
  """``dL_t/dz_t [T, B, O]``, unweighted: CE ``softmax - onehot``; SE ``2(y - target) out_act'``."""
  if loss == "cross_entropy":
    return softmax(z) - (np.asarray(targets)[..., None] == np.arange(z.shape[-1]))
  y = OUTPUT_ACTIVATIONS[output_activation](z)
  g = 2.0 * (y - np.asarray(targets, np.float64))
  if output_activation == "sigmoid":
    return g * y * (1.0 - y)
  if output_activation == "tanh":
    return g * (1.0 - y * y)
  if output_activation == "softmax":
    return y * (g - np.sum(g * y, axis=-1, keepdims=True))
  return g


def bptt(params: Tree, xs: Any, targets: Any, h0: Any = None, lengths: Any = None,
         target_mask: Any = None, activation: str = "tanh", output_activation: str = "identity",
         loss: str = "cross_entropy", reduction: str = "sum") -> tuple[Tree, np.ndarray]:
  """Hand-derived backprop through time of :func:`loss`: ``(grads like params, dh0 [L*D, B, H])``.

  Each direction walks its processing order in reverse with a carry ``c``
  (``dL/dh`` of the state before the step): ``e_t = g_t + c``; live:
  ``delta_t = e_t * act'(h_t)``, ``c = W_hh^T delta_t``; dead: ``delta_t = 0``, ``c = e_t``.
  """
  params = as_numpy(params)
  layers, W_hy = params[0], params[1]
  top, states, _, inputs = forward(params, xs, h0, lengths, activation)
  num_steps, batch = top.shape[:2]
  num_dirs, hidden = len(layers[0]), np.shape(layers[0][0][1])[0]
  h0 = initial_states(params, h0, batch)                                # [L*D, B, H]
  live = live_mask(lengths, num_steps, batch)[..., None] > 0            # [T, B, 1]
  w = loss_weights(lengths, target_mask, num_steps, batch, reduction)[..., None]  # [T, B, 1]
  delta_z = output_delta(logits(params, top), targets, loss, output_activation)
  dz = w * np.where(w != 0, delta_z, 0.0)                               # [T, B, O]
  dW_hy, db_y = np.einsum("tbo,tbk->ok", dz, top), dz.sum((0, 1))
  g = np.where(live, dz @ W_hy, 0.0)                                    # [T, B, D*H]
  layer_grads, dh0 = [None] * len(layers), np.zeros_like(h0)
  for l in reversed(range(len(layers))):
    dx = np.zeros_like(inputs[l])                                       # [T, B, I_l]
    cell_grads = []
    for d, (W_xh, W_hh, b_h) in enumerate(layers[l]):
      hs, g_d = states[l][d], g[..., d * hidden:(d + 1) * hidden]       # [T, B, H]
      order = list(range(num_steps)) if d == 0 else list(reversed(range(num_steps)))
      dW_xh, dW_hh, db_h = np.zeros(np.shape(W_xh)), np.zeros(np.shape(W_hh)), np.zeros(hidden)
      c = np.zeros((batch, hidden))
      for i in reversed(range(num_steps)):
        t = order[i]
        h_prev = h0[l * num_dirs + d] if i == 0 else hs[order[i - 1]]   # [B, H]
        e = g_d[t] + c
        delta = np.where(live[t], e * act_derivative(activation, hs[t]), 0.0)
        c = np.where(live[t], delta @ W_hh, e)
        dW_hh += delta.T @ h_prev
        dW_xh += delta.T @ inputs[l][t]
        db_h += delta.sum(0)
        dx[t] += delta @ W_xh
      dh0[l * num_dirs + d] = c
      cell_grads.append(_like(layers[l][d], (dW_xh, dW_hh, db_h)))
    layer_grads[l] = _like(layers[l], cell_grads)
    g = dx
  return _like(params, (_like(layers, layer_grads), dW_hy, db_y)), dh0


def numerical_grad(f: Callable[[Tree], float], params: Tree, eps: float = 1e-6) -> Tree:
  """Central differences ``(f(p + eps e_i) - f(p - eps e_i)) / 2 eps`` over every leaf entry."""
  params = tree_map(lambda a: np.array(a, np.float64), params)          # copies, perturbed in place

  def leaf_grad(a: np.ndarray) -> np.ndarray:
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
      old = a[i]
      a[i] = old + eps
      up = f(params)
      a[i] = old - eps
      down = f(params)
      a[i] = old
      grad[i] = (up - down) / (2 * eps)
    return grad

  return tree_map(leaf_grad, params)


def sample_logits(params: Tree, prompt: Any, symbols: Any, activation: str = "tanh") -> np.ndarray:
  """Logits ``z`` after each fed symbol of ``prompt`` then ``symbols``: ``[P + S, O]``.

  For a one-hot next-symbol model (``I == O``, unidirectional, ``h0 = 0``): row ``i``
  gives ``p(symbol i + 1 - P) = softmax(z_i / temperature)``, so ``symbols[k]`` was
  drawn from row ``P - 1 + k``.
  """
  layers, W_hy = params[0], np.asarray(params[1], np.float64)
  size = W_hy.shape[0]
  if len(layers[0]) != 1 or np.shape(layers[0][0][0])[1] != size:
    raise ValueError("sample_logits needs a unidirectional model with I == O")
  fed = np.concatenate([np.asarray(prompt, int).reshape(-1), np.asarray(symbols, int).reshape(-1)])
  top = forward(params, np.eye(size)[fed][:, None, :], activation=activation)[0]  # [P+S, 1, H]
  return logits(params, top)[:, 0]


def step_jacobians(params: Tree, xs: Any, h0: Any, layer: int, direction: int,
                   activation: str = "tanh") -> np.ndarray:
  """``J_t = dh_t/dh_{t-1} = diag(act'(h_t)) W_hh [T, H, H]`` of cell ``(layer, direction)``
  along one sequence ``xs [T, I]`` (``h0 [L*D, H]``), steps in the order the cell reads them."""
  p = as_numpy(params)
  _, states, _, _ = forward(p, np.asarray(xs)[:, None], np.asarray(h0)[:, None], None, activation)
  order = slice(None) if direction == 0 else slice(None, None, -1)
  hs = states[layer][direction][order, 0]                                 # [T, H] read order
  W_hh = p[0][layer][direction][1]
  return act_derivative(activation, hs)[:, :, None] * W_hh[None]


def lyapunov_exponents(jacobians: np.ndarray, k: int, burn_in: int = 0) -> np.ndarray:
  """Benettin's QR method on ``J_1..J_T [T, H, H]``: ``Q_t R_t = J_t Q_{t-1}``, ``Q_0 =
  I[:, :k]``, each ``R_t`` with a non-negative diagonal (``Q``'s columns sign-fixed); returns
  ``mean_{t > burn_in} log R_t[i, i]``, ``[k]``."""
  q = np.eye(len(jacobians[0]), k)
  total = np.zeros(k)
  for t, jacobian in enumerate(jacobians):
    q, r = np.linalg.qr(jacobian @ q)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    q, diagonal = q * signs, np.diag(r) * signs
    if t >= burn_in:
      total += np.log(diagonal)
  return total / (len(jacobians) - burn_in)
