"""Data for the command-line tasks, as time-major :class:`jaxrnn.Batch` es: generators, pure
functions of a ``jax.random`` key, and loaders of data shipped inside installed packages (their
optional dependencies imported only when called; nothing is downloaded)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.pytrees import Batch, default_dtype


def last_step_mask(num_steps: int, batch_size: int) -> jax.Array:
  """``[T, B]`` boolean mask that is true at step ``T - 1`` only (many-to-one tasks)."""
  return (jnp.arange(num_steps)[:, None] == num_steps - 1) & jnp.ones((1, batch_size), bool)


def adding_problem(key: jax.Array, batch_size: int, num_steps: int, dtype=None) -> Batch:
  """Hochreiter & Schmidhuber's (1997) adding problem: sum the two marked ``U(0, 1)`` values (one
  in each half): ``Batch(xs [T, B, 2], targets [T, B, 1], target_mask [T, B])``, live at T - 1."""
  if num_steps < 2:
    raise ValueError(f"num_steps must be at least 2, got {num_steps}")
  dtype = default_dtype() if dtype is None else dtype
  k_val, k_first, k_second = jax.random.split(key, 3)
  half = num_steps // 2
  values = jax.random.uniform(k_val, (num_steps, batch_size), dtype)           # [T, B]
  first = jax.random.randint(k_first, (batch_size,), 0, half)
  second = jax.random.randint(k_second, (batch_size,), half, num_steps)
  steps = jnp.arange(num_steps)[:, None]
  markers = ((steps == first) | (steps == second)).astype(dtype)               # [T, B]
  total = jnp.sum(values * markers, axis=0)                                     # [B]
  xs = jnp.stack([values, markers], axis=-1)                                    # [T, B, 2]
  targets = jnp.broadcast_to(total[None, :, None], (num_steps, batch_size, 1))
  return Batch(xs=xs, targets=targets, target_mask=last_step_mask(num_steps, batch_size))


def copy_task(key: jax.Array, batch_size: int, length: int, delay: int, num_symbols: int = 8,
              dtype=None) -> Batch:
  """The copy task: read ``length`` symbols, ``delay - 1`` blanks and a go marker (one-hot over
  ``K + 2`` codes), then write the symbols back: ``Batch(xs [T, B, K + 2], targets [T, B],
  target_mask [T, B])``, ``T = 2 * length + delay``."""
  if length < 1 or delay < 1 or num_symbols < 2:
    raise ValueError(f"need length >= 1, delay >= 1 and num_symbols >= 2, got "
                     f"{length}, {delay}, {num_symbols}")
  dtype = default_dtype() if dtype is None else dtype
  num_steps = 2 * length + delay
  symbols = jax.random.randint(key, (length, batch_size), 0, num_symbols)     # [L, B]
  rest = jnp.full((delay + length, batch_size), num_symbols).at[delay - 1].set(num_symbols + 1)
  codes = jnp.concatenate([symbols, rest])                     # symbols, blanks, go, blanks [T, B]
  answer = jnp.arange(num_steps) >= length + delay                             # [T]
  targets = jnp.concatenate([jnp.zeros((length + delay, batch_size), symbols.dtype), symbols])
  return Batch(xs=jax.nn.one_hot(codes, num_symbols + 2, dtype=dtype), targets=targets,
               target_mask=answer[:, None] & jnp.ones((1, batch_size), bool))


def noisy_sines(key: jax.Array, batch_size: int, num_steps: int, noise: float = 0.1,
                dtype=None) -> Batch:
  """Next-step prediction of ``a sin(w t + phi) + noise * N(0, 1)``, ``a ~ U(0.5, 1)``,
  ``w ~ U(0.1, 0.6)``, ``phi ~ U(0, 2 pi)``: ``Batch(xs [T, B, 1], targets [T, B, 1])``."""
  dtype = default_dtype() if dtype is None else dtype
  k_amp, k_freq, k_phase, k_noise = jax.random.split(key, 4)
  amp = jax.random.uniform(k_amp, (batch_size,), dtype, 0.5, 1.0)
  freq = jax.random.uniform(k_freq, (batch_size,), dtype, 0.1, 0.6)
  phase = jax.random.uniform(k_phase, (batch_size,), dtype, 0.0, 2 * np.pi)
  t = jnp.arange(num_steps + 1, dtype=dtype)[:, None]                          # [T+1, 1]
  wave = amp * jnp.sin(freq * t + phase)                                       # [T+1, B]
  observed = wave + noise * jax.random.normal(k_noise, wave.shape, dtype)
  return Batch(xs=observed[:-1, :, None], targets=observed[1:, :, None])


def sample_rows(key: jax.Array, num_rows: int, batch_size: int) -> jax.Array:
  """``[B]`` indices drawn uniformly, with replacement, from ``range(num_rows)``."""
  return jax.random.randint(key, (batch_size,), 0, num_rows)


def labelled_sequences(xs: jax.Array, labels: jax.Array) -> Batch:
  """Many-to-one classification of ``xs [T, N, I]`` by ``labels [N]``, live at the last step."""
  num_steps, count = xs.shape[:2]
  return Batch(xs=xs, targets=jnp.broadcast_to(labels, (num_steps, count)),
               target_mask=last_step_mask(num_steps, count))


def random_windows(key: jax.Array, series: jax.Array, batch_size: int, window: int) -> jax.Array:
  """``[window + 1, B]`` contiguous slices of ``series [N]`` at random offsets."""
  starts = sample_rows(key, series.shape[0] - window, batch_size)              # [B]
  return series[starts[None, :] + jnp.arange(window + 1)[:, None]]


def forecast_batch(windows: jax.Array) -> Batch:
  """Next-value forecasting from ``windows [T + 1, B]``: ``xs [T, B, 1]``, ``targets [T, B, 1]``."""
  return Batch(xs=windows[:-1, :, None], targets=windows[1:, :, None])


def text_batch(windows: jax.Array, vocab_size: int, dtype=None) -> Batch:
  """Next-character prediction from codes ``windows [T + 1, B]``: one-hot ``xs``, code targets."""
  dtype = default_dtype() if dtype is None else dtype
  return Batch(xs=jax.nn.one_hot(windows[:-1], vocab_size, dtype=dtype), targets=windows[1:])


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's bundled 8x8 digits: ``(images [1797, 8, 8] in [0, 1], labels [1797])``."""
  from sklearn.datasets import load_digits as sklearn_digits
  digits = sklearn_digits()
  return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int32)


def digit_sequences(images: np.ndarray, read: str = "rows") -> np.ndarray:
  """Images ``[N, 8, 8]`` as sequences: ``rows`` gives ``[8, N, 8]``, ``pixels`` ``[64, N, 1]``."""
  if read not in ("rows", "pixels"):
    raise ValueError(f"unknown read order {read!r}; expected 'rows' or 'pixels'")
  return np.transpose(images if read == "rows" else images.reshape(len(images), -1, 1), (1, 0, 2))


def load_sunspots() -> np.ndarray:
  """statsmodels' bundled yearly sunspot numbers, 1700-2008: ``[309]`` float64."""
  from statsmodels.datasets import sunspots
  return np.asarray(sunspots.load_pandas().data["SUNACTIVITY"], np.float64)


def load_text(path: str | None = None) -> str:
  """The text of ``path``, or by default Python's own ``pydoc_data.topics``; ``ValueError`` when
  the file is missing, unreadable, not UTF-8, or has fewer than two characters."""
  if path is None:
    from pydoc_data.topics import topics
    return "".join(topics[name] for name in sorted(topics))
  try:
    text = Path(path).read_text(encoding="utf-8")
  except FileNotFoundError:
    raise ValueError(f"text file {path} does not exist") from None
  except (OSError, UnicodeDecodeError) as error:
    raise ValueError(f"cannot read text file {path}: {error}") from None
  if len(text) < 2:
    raise ValueError(f"text file {path} is empty or one character long; it needs two or more")
  return text


def encode_text(text: str, vocab: str) -> np.ndarray:
  """Character codes ``[N]`` (int32) of ``text`` in ``vocab``; every character must be in it."""
  index = {c: i for i, c in enumerate(vocab)}
  if missing := sorted(set(text) - index.keys()):
    raise ValueError(f"characters {''.join(missing)!r} are not in the vocabulary")
  return np.fromiter((index[c] for c in text), np.int32, len(text))
