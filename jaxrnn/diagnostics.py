"""Vanishing and exploding gradients, measured, and the rates behind them.

BPTT multiplies one Jacobian per step, ``dh_t/dh_k = prod_{i=k+1}^t J_i`` with
``J_i = dh_i/dh_{i-1} = diag(act'(a_i + W_hh h_{i-1})) W_hh``, so

``||dh_t/dh_k|| <= ||W_hh||^(t-k) ||act'||^(t-k)``

(spectral norms, ``||act'||`` the largest ``|act'|`` on the path): below 1 the
gradient vanishes geometrically; where the Jacobians stretch, it explodes. The
actual rate is the largest Lyapunov exponent ``lambda_1``:
``||dh_t/dh_k|| ~ exp(lambda_1 (t - k))`` for long chains
(:func:`lyapunov_exponents`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import checks
from jaxrnn.cell import activation_derivative, time_order
from jaxrnn.pytrees import RNNParams, Shape
from jaxrnn.spec import PLAIN, ModelSpec, check_specs
from jaxrnn.unroll import forward


class GradientFlow(NamedTuple):
  """Jacobian norms along one sequence and the seed's bound on them.

  All pairs (``start=None``): ``norms[t, k] = ||dh_t/dh_k||_2`` and ``bound[t, k] =
  (||W_hh||_2 ||act'||)^(t-k)``, ``[T+1, T+1]``, 0 for ``k > t``. From one start step
  (``start=k``, ``stride=s``): ``norms[i] = ||dh_t/dh_k||_2`` and ``bound[i]`` at
  ``t = k + i s``, ``[(T - k) // s + 1]``. ``log_norms`` and ``log_bound`` are their natural
  logarithms (``-inf`` for ``k > t``), computed without forming the norms, so they stay finite
  where ``norms`` and ``bound`` under- or overflow (``0.5^t`` does at ``t`` ~ 1075 in float64).
  ``w_norm = ||W_hh||_2`` and ``act_slope = ||act'||``, the largest ``|act'(a_i)|`` on the path.
  """
  norms: jax.Array
  bound: jax.Array
  w_norm: jax.Array
  act_slope: jax.Array
  log_norms: jax.Array
  log_bound: jax.Array


def check_path(params: RNNParams, xs: jax.Array, h0: jax.Array | None, layer: int,
               direction: int, model: ModelSpec) -> tuple[Shape, jax.Array]:
  """Checks the arguments :func:`gradient_flow` and :func:`lyapunov_exponents` share: one
  sequence ``xs [T, I]`` with ``T >= 1``, ``h0 [L*D, H]`` or ``None``, a cell ``(layer,
  direction)`` of the model; returns its :class:`Shape` and ``h0 [L*D, 1, H]`` (zeros for
  ``None``)."""
  shape = checks.check_params(params)
  check_specs(shape, model)
  checks.check_array("xs", xs, "[T, I]", (None, shape.input_size), params.W_hy.dtype)
  if xs.shape[0] < 1:
    raise ValueError("xs must hold at least one step (T >= 1)")
  if h0 is not None:
    checks.check_shape("h0", h0, "[L*D, H]", (None, None))
    h0 = h0[:, None]
  h0 = checks.check_h0(h0, shape, 1, params.W_hy.dtype)                  # [L*D, 1, H]
  for name, value, count in (("layer", layer, shape.num_layers),
                             ("direction", direction, shape.num_directions)):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
      raise ValueError(f"{name} must be an int in [0, {count}), got {value!r}")
  return shape, h0


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def path_slopes(params: RNNParams, xs: jax.Array, h0: jax.Array, layer: int, direction: int,
                model: ModelSpec) -> tuple[jax.Array, jax.Array]:
  """``W_hh [H, H]`` of cell ``params.layers[layer][direction]`` and ``act'(a_t) [T, H]``
  along the inputs it received from one checked sequence ``xs [T, I]`` (``h0 [L*D, 1, H]``),
  steps in the order the cell reads them: ``J_t = act'(a_t)[:, None] * W_hh``."""
  trace = forward(params, xs[:, None], h0, None, model, PLAIN)
  hs = time_order(trace.states[layer][direction][:, 0], direction == 1)  # [T, H]
  return params.layers[layer][direction].W_hh, activation_derivative(model, hs)


def jacobian_times(slope: jax.Array, W_hh: jax.Array, m: jax.Array) -> jax.Array:
  """``J_t m = diag(act'(a_t)) W_hh m [H, K]`` from ``slope = act'(a_t) [H]``: ``O(H^2 K)``,
  no ``[H, H]`` Jacobian formed."""
  return slope[:, None] * (W_hh @ m)


@jax.jit
def jacobian_norms(slopes: jax.Array, W_hh: jax.Array) -> jax.Array:
  """``N[t, k] = ||J_t J_{t-1} ... J_{k+1}||_2 [T+1, T+1]`` (0 for ``k > t``) from
  ``act'(a_1..a_T) [T, H]``: ``T + 1`` scans of ``T`` steps, ``O(T^2 H^3)`` time."""
  num_steps, hidden = slopes.shape
  eye = jnp.eye(hidden, dtype=slopes.dtype)

  def from_k(k):
    def step(m, inputs):
      t, slope = inputs
      m = jnp.where(t > k, jacobian_times(slope, W_hh, m), jnp.where(t == k, eye, 0 * eye))
      return m, jnp.linalg.norm(m, ord=2)
    m0 = jnp.where(k == 0, eye, 0 * eye)
    _, norms = jax.lax.scan(step, m0, (jnp.arange(1, num_steps + 1), slopes))
    return jnp.concatenate([jnp.linalg.norm(m0, ord=2)[None], norms])   # [T+1] over t

  return jax.vmap(from_k, out_axes=1)(jnp.arange(num_steps + 1))        # [t, k]


@functools.partial(jax.jit, static_argnums=(2, 3))
def log_norms_from(slopes: jax.Array, W_hh: jax.Array, start: int, stride: int) -> jax.Array:
  """``log ||J_t ... J_{start+1}||_2`` at ``t = start, start + stride, ... <= T``, ``[n]``.

  One scan over the steps after ``start`` carries ``M_t = exp(c_t) U_t`` with ``U_t``
  rescaled to unit Frobenius norm every step (no over- or underflow); the spectral norm is
  taken every ``stride``-th step. ``O((T - start) H^3)`` time, ``O(H^2)`` memory besides the
  ``[n]`` result.
  """
  hidden = W_hh.shape[0]
  count = (slopes.shape[0] - start) // stride
  blocks = slopes[start:start + count * stride].reshape(count, stride, hidden)

  def step(carry, slope):
    m, log_scale = carry
    m = jacobian_times(slope, W_hh, m)
    size = jnp.linalg.norm(m)                                            # Frobenius
    return (m / jnp.where(size > 0, size, 1), log_scale + jnp.log(size)), None

  def block(carry, block_slopes):
    carry, _ = jax.lax.scan(step, carry, block_slopes)
    m, log_scale = carry
    return carry, log_scale + jnp.log(jnp.linalg.norm(m, ord=2))

  eye = jnp.eye(hidden, dtype=slopes.dtype)
  _, logs = jax.lax.scan(block, (eye, jnp.zeros((), slopes.dtype)), blocks)
  return jnp.concatenate([jnp.zeros((1,), slopes.dtype), logs])


def gradient_flow(params: RNNParams, xs: jax.Array, h0: jax.Array | None = None, *,
                  start: int | None = None, stride: int = 1, layer: int = 0,
                  direction: int = 0, model: ModelSpec = ModelSpec()) -> GradientFlow:
  """``||dh_t/dh_k||`` along one sequence in one layer, and the seed's bound on it.

  The Jacobians are those of cell ``params.layers[layer][direction]`` along the
  inputs it received from one sequence ``xs [T, I]`` (``h0 [L*D, H]``, zeros
  when ``None``), steps counted in the order the cell reads them. Returns a
  :class:`GradientFlow`; ``norms <= bound`` entrywise (up to rounding).

  * ``start=None`` (the default): every pair ``0 <= k, t <= T``, ``[T+1, T+1]``
    tables in ``O(T^2 H^3)`` time; for short sequences.
  * ``start=k``: ``||dh_t/dh_k||`` from one start step, at ``t = k, k + stride, ...``
    up to ``T``: one scan, ``O((T - k) H^3)`` time, memory ``O(H^2)`` besides the
    path and the ``(T - k) // stride + 1`` norms. For long sequences: use its
    ``log_norms``, which do not underflow.

  ``start`` and ``stride`` fix the shapes: under ``jax.jit`` they are static.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> seq = jax.random.normal(jax.random.key(1), (6, 3))  # one sequence [T, I]
    >>> flow = jaxrnn.gradient_flow(params, seq)
    >>> flow.norms.shape                                    # ||dh_t/dh_k|| for 0 <= k, t <= T
    (7, 7)
    >>> jaxrnn.gradient_flow(params, seq, start=0, stride=2).norms.shape   # t = 0, 2, 4, 6
    (4,)
  """
  _, h0 = check_path(params, xs, h0, layer, direction, model)
  num_steps = xs.shape[0]
  if start is None:
    if stride != 1:
      raise ValueError(f"stride is for norms from one start step: give start, or stride=1 "
                       f"(got stride={stride!r})")
    steps = jnp.arange(num_steps + 1)
    gaps = steps[:, None] - steps[None, :]                               # t - k
  else:
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= num_steps:
      raise ValueError(f"start must be an int in [0, T] = [0, {num_steps}], got {start!r}")
    checks.check_int("stride", stride)
    gaps = jnp.arange(0, num_steps - start + 1, stride)                  # t - start
  W_hh, slopes = path_slopes(params, xs, h0, layer, direction, model)
  act_slope = jnp.max(jnp.abs(slopes))
  w_norm = jnp.linalg.norm(W_hh, ord=2)
  log_rate = jnp.log(w_norm * act_slope)
  log_bound = jnp.where(gaps > 0, gaps * log_rate, jnp.where(gaps == 0, 0.0, -jnp.inf))
  bound = jnp.where(gaps >= 0, (w_norm * act_slope) ** jnp.maximum(gaps, 0), 0)
  if start is None:
    norms = jacobian_norms(slopes, W_hh)
    log_norms = jnp.log(norms)
  else:
    log_norms = log_norms_from(slopes, W_hh, start, stride)
    norms = jnp.exp(log_norms)
  return GradientFlow(norms, bound, w_norm, act_slope, log_norms, log_bound)


def lyapunov_exponents(params: RNNParams, xs: jax.Array, h0: jax.Array | None = None, *,
                       k: int = 1, burn_in: int = 0, layer: int = 0, direction: int = 0,
                       model: ModelSpec = ModelSpec()) -> jax.Array:
  """The ``k`` leading Lyapunov exponents of one sequence's Jacobian product, ``[k]``.

  Along the path of cell ``params.layers[layer][direction]`` on ``xs [T, I]``
  (``h0 [L*D, H]``, zeros when ``None``; arguments as :func:`gradient_flow`
  takes them), with ``J_t = diag(act'(a_t)) W_hh``, the QR re-orthonormalisation
  of Benettin et al. (1980):

  ``Q_t R_t = J_t Q_{t-1}`` from ``Q_0 = I[:, :k]``,
  ``lambda_i = 1 / (T - burn_in) sum_{t > burn_in} log |R_t[i, i]|``,

  so ``sum_{i <= j} lambda_i`` is the growth rate of ``j``-dimensional volumes
  under ``dh_t/dh_0``, and ``||dh_t/dh_k|| ~ exp(lambda_1 (t - k))`` for long
  chains: gradients vanish for ``lambda_1 < 0``, explode for ``lambda_1 > 0``.
  The first ``burn_in`` steps re-orthonormalise without being averaged (a
  transient; 0 by default, every step counts). ``J_t Q`` is
  ``act'(a_t)[:, None] * (W_hh @ Q)``, inside one ``lax.scan``: ``O(T H^2 k)``
  time; no ``[T, H, H]`` Jacobian, memory ``O(H k)`` besides the path. ``k`` and
  ``burn_in`` are static under ``jax.jit``; ``vmap`` over sequences works.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> params = jaxrnn.init_params(jax.random.key(0), 3, 5, 2)
    >>> seq = jax.random.normal(jax.random.key(1), (6, 3))  # one sequence [T, I]
    >>> jaxrnn.lyapunov_exponents(params, seq, k=2).shape
    (2,)
    >>> cell = jaxrnn.CellParams(jnp.zeros((5, 3)), 0.5 * jnp.eye(5), jnp.zeros(5))
    >>> linear = params._replace(layers=((cell,),))   # h_t = tanh(0.5 h_{t-1}) stays at 0
    >>> jnp.round(jaxrnn.lyapunov_exponents(linear, jnp.zeros((100, 3)), k=2), 4)  # log 0.5
    Array([-0.6931, -0.6931], dtype=float32)
  """
  shape, h0 = check_path(params, xs, h0, layer, direction, model)
  hidden, num_steps = shape.hidden_size, xs.shape[0]
  if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= hidden:
    raise ValueError(f"k must be an int in [1, H] = [1, {hidden}], got {k!r}")
  if not isinstance(burn_in, int) or isinstance(burn_in, bool) or not 0 <= burn_in < num_steps:
    raise ValueError(f"burn_in must be an int in [0, T) = [0, {num_steps}), got {burn_in!r}")
  return exponents(*path_slopes(params, xs, h0, layer, direction, model), k, burn_in)


@functools.partial(jax.jit, static_argnums=(2, 3))
def exponents(W_hh: jax.Array, slopes: jax.Array, k: int, burn_in: int) -> jax.Array:
  """:func:`lyapunov_exponents` from ``W_hh [H, H]`` and ``act'(a_t) [T, H]`` (checked)."""
  num_steps = slopes.shape[0]

  def step(carry, inputs):
    q, total = carry
    slope, counted = inputs
    q, r = jnp.linalg.qr(jacobian_times(slope, W_hh, q))
    return (q, jnp.where(counted, total + jnp.log(jnp.abs(jnp.diagonal(r))), total)), None

  counted = jnp.arange(num_steps) >= burn_in
  start = (jnp.eye(W_hh.shape[0], k, dtype=slopes.dtype), jnp.zeros(k, slopes.dtype))
  (_, total), _ = jax.lax.scan(step, start, (slopes, counted))
  return total / (num_steps - burn_in)
