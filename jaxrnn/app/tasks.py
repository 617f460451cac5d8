"""The command-line tasks: per task, its data, metric and baseline. The training batch of step
``k`` is drawn with ``fold_in(key, k)``, so a resumed run sees an uninterrupted run's batches."""

import hashlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.app import data
from jaxrnn.app.config import Config
from jaxrnn.pytrees import Batch

COPY_SYMBOLS = 8
TEST_SEQUENCES = 1000
TEXT_TEST_CHUNK = 256
TEXT_TEST_CHUNKS = 128


class Task(NamedTuple):
  """A task built for one :class:`Config`: ``batches`` (``step -> Batch``) and a ``test`` batch,
  whose eval metrics ``score`` turns into ``metric`` (mse, accuracy, rmse or bits/char), to beat
  ``baseline`` (the trivial predictor ``baseline_name``). ``train_size``, the sequences of an epoch
  (a series' windows), is ``None`` for generated data; ``predicts_next`` (target ``t`` is input
  ``t + 1``) rules out bidirectional models; ``fingerprint`` hashes data read from files."""
  input_size: int
  output_size: int
  loss: str
  batches: Callable[[int], Batch]
  test: Batch
  metric: str
  score: Callable[[dict[str, float]], float]
  baseline: float
  baseline_name: str
  train_size: int | None = None
  vocab: str = ""
  predicts_next: bool = False
  fingerprint: str = ""


def hash_data(*arrays: Any) -> str:
  """The first 16 hex digits of the SHA-256 of ``arrays``' bytes (or of a string)."""
  digest = hashlib.sha256()
  for a in arrays:
    digest.update(a.encode() if isinstance(a, str) else np.ascontiguousarray(a).tobytes())
  return digest.hexdigest()[:16]


def higher_is_better(metric: str) -> bool:
  """Whether a larger value of ``metric`` is better (accuracy) or worse (errors, bits)."""
  return metric == "accuracy"


def _per_step(sample: Callable[[jax.Array], Batch], key: jax.Array) -> Callable[[int], Batch]:
  """``step -> sample(fold_in(key, step))``, compiled."""
  return jax.jit(lambda step: sample(jax.random.fold_in(key, step)))


def _generated(make: Callable[[jax.Array, int], Batch], config: Config,
               key: jax.Array) -> tuple[Callable[[int], Batch], Batch]:
  """Training batches ``step -> make(key_step, batch_size)`` and a test set from its own key."""
  k_train, k_test = jax.random.split(key)
  test = jax.jit(make, static_argnums=1)(k_test, TEST_SEQUENCES)
  return _per_step(lambda k: make(k, config.batch_size), k_train), test


def _adding(config: Config, key: jax.Array, dtype: Any) -> Task:
  batches, test = _generated(lambda k, size: data.adding_problem(k, size, config.seq_len, dtype),
                             config, key)
  baseline = float(np.mean((np.asarray(test.targets[-1]) - 1.0) ** 2))
  return Task(2, 1, "squared_error", batches, test, "mse", lambda m: m["mse"], baseline,
              "predict 1.0")


def _copy(config: Config, key: jax.Array, dtype: Any) -> Task:
  batches, test = _generated(lambda k, size: data.copy_task(
      k, size, config.seq_len, config.delay, COPY_SYMBOLS, dtype), config, key)
  return Task(COPY_SYMBOLS + 2, COPY_SYMBOLS, "cross_entropy", batches, test, "accuracy",
              lambda m: m["accuracy"], 1 / COPY_SYMBOLS, "chance")


def _sine(config: Config, key: jax.Array, dtype: Any) -> Task:
  batches, test = _generated(lambda k, size: data.noisy_sines(k, size, config.seq_len,
                                                              dtype=dtype), config, key)
  baseline = float(np.mean((np.asarray(test.xs) - np.asarray(test.targets)) ** 2))
  return Task(1, 1, "squared_error", batches, test, "mse", lambda m: m["mse"], baseline,
              "repeat last value", predicts_next=True)


def _digits(config: Config, key: jax.Array, dtype: Any) -> Task:
  images, labels = data.load_digits()
  order = np.random.default_rng(0).permutation(len(labels))     # a fixed split, whatever the seed
  num_test = len(labels) // 5
  test_rows, train_rows = order[:num_test], order[num_test:]
  seqs = data.digit_sequences(images, config.read).astype(dtype)              # [T, N, I]
  train_xs, train_labels = jnp.asarray(seqs[:, train_rows]), jnp.asarray(labels[train_rows])

  def sample(k):
    rows = data.sample_rows(k, len(train_rows), config.batch_size)
    return data.labelled_sequences(train_xs[:, rows], train_labels[rows])

  test = jax.jit(data.labelled_sequences)(seqs[:, test_rows], labels[test_rows])
  majority = float(np.max(np.bincount(labels[test_rows])) / num_test)
  return Task(seqs.shape[-1], 10, "cross_entropy", _per_step(sample, key), test, "accuracy",
              lambda m: m["accuracy"], majority, "most frequent class", len(train_rows),
              fingerprint=hash_data(images, labels))


def _sunspots(config: Config, key: jax.Array, dtype: Any) -> Task:
  years = data.load_sunspots()
  num_train = int(0.8 * len(years))
  if config.seq_len >= num_train:
    raise ValueError(f"seq_len must be below the {num_train} training years")
  mean, std = years[:num_train].mean(), years[:num_train].std()
  series = ((years - mean) / std).astype(dtype)                               # [N]
  train = jnp.asarray(series[:num_train])
  sample = lambda k: data.forecast_batch(
      data.random_windows(k, train, config.batch_size, config.seq_len))
  test = data.forecast_batch(series[:, None])._replace(
      target_mask=(np.arange(len(years) - 1) >= num_train - 1)[:, None])      # forecast test years
  persistence = float(np.sqrt(np.mean(np.diff(years)[num_train - 1:] ** 2)))
  return Task(1, 1, "squared_error", _per_step(sample, key), test, "rmse",
              lambda m: math.sqrt(m["mse"]) * std, persistence, "persistence",
              num_train - config.seq_len, predicts_next=True, fingerprint=hash_data(years))


def _text(config: Config, key: jax.Array, dtype: Any) -> Task:
  text = data.load_text(config.text_file)
  vocab = config.vocab or "".join(sorted(set(text)))
  try:
    codes = data.encode_text(text, vocab)
  except ValueError:
    raise ValueError("the text has characters outside the run's vocabulary; "
                     "was the text file changed?") from None
  num_train = int(0.9 * len(codes))
  train, held_out = jnp.asarray(codes[:num_train]), codes[num_train:]
  if num_train <= config.seq_len + 1 or len(held_out) < 2:
    raise ValueError(f"the text ({len(codes)} characters) is too short for seq_len "
                     f"{config.seq_len}; 90% of it is for training, 10% held out")
  chunk = min(TEXT_TEST_CHUNK, len(held_out) - 1)
  count = min(TEXT_TEST_CHUNKS, (len(held_out) - 1) // chunk)
  windows = held_out[np.arange(count)[None, :] * chunk + np.arange(chunk + 1)[:, None]]
  test = jax.jit(data.text_batch, static_argnums=(1, 2))(windows, len(vocab), dtype)
  counts = np.bincount(codes[:num_train], minlength=len(vocab)) + 1.0
  unigram = float(-np.mean(np.log2(counts / counts.sum())[windows[1:]])) + 0.0    # not -0.0
  sample = lambda k: data.text_batch(
      data.random_windows(k, train, config.batch_size, config.seq_len), len(vocab), dtype)
  return Task(len(vocab), len(vocab), "cross_entropy", _per_step(sample, key), test, "bits/char",
              lambda m: m["loss"] / math.log(2), unigram, "unigram", num_train - config.seq_len,
              vocab, predicts_next=True, fingerprint=hash_data(text))


TASKS: dict[str, Callable[[Config, jax.Array, Any], Task]] = {
    "adding": _adding, "copy": _copy, "sine": _sine, "digits": _digits, "sunspots": _sunspots,
    "text": _text}


def build_task(config: Config, key: jax.Array) -> Task:
  """The :class:`Task` of ``config``, its data drawn from ``key``; ``ValueError`` for data that
  cannot serve (a missing or empty text file)."""
  return TASKS[config.task](config, key, jnp.dtype(config.dtype))
