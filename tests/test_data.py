"""The command line's task data and run configs: generators are pure functions of a key,
loaders read bundled data, tasks have baselines, a :class:`Config` checks itself."""

import dataclasses
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.app import data
from jaxrnn.app.config import (FIELDS, FLOAT32_HIGH, FLOAT32_LOW, MAX_STEPS, RENAMED, TASK_DEFAULTS,
                               Config, from_saved, resolve_config)
from jaxrnn.app.tasks import TASKS, build_task

KEY = jax.random.key(0)


@pytest.mark.parametrize("make", [
    lambda k: data.adding_problem(k, 5, 12, jnp.float32),
    lambda k: data.copy_task(k, 5, 3, 4, 6, jnp.float32),
    lambda k: data.noisy_sines(k, 5, 12, dtype=jnp.float32),
])
def test_generators_are_pure_functions_of_the_key(make):
  chex.assert_trees_all_equal(make(KEY), make(jax.random.key(0)))
  assert not np.array_equal(np.asarray(make(KEY).xs), np.asarray(make(jax.random.key(1)).xs))


def test_adding_markers_are_independent_uniform_positions_in_each_half():
  """Each marker is uniform over its half (T = 20: 10 positions each, 1000 sequences), and the
  two are independent (drawn from one key, the second would sit a fixed distance after the
  first)."""
  markers = np.asarray(data.adding_problem(KEY, 1000, 20, jnp.float32).xs[..., 1])  # [T, B]
  first, second = np.argmax(markers[:10], 0), 10 + np.argmax(markers[10:], 0)
  for position, size in ((first, 10), (second - 10, 10)):
    counts = np.bincount(position, minlength=size)
    assert counts.size == size and counts.min() > 60, counts      # ~100 each
  assert abs(np.corrcoef(first, second)[0, 1]) < 0.1
  assert np.unique(second - first).size > 15


def test_adding_target_is_the_sum_of_the_marked_values_at_the_last_step():
  batch = data.adding_problem(KEY, 7, 10, jnp.float32)
  values, markers = np.asarray(batch.xs[..., 0]), np.asarray(batch.xs[..., 1])
  np.testing.assert_array_equal(markers[:5].sum(0), 1)
  np.testing.assert_array_equal(markers[5:].sum(0), 1)
  np.testing.assert_allclose(batch.targets[-1, :, 0], (values * markers).sum(0), rtol=1e-6)
  np.testing.assert_array_equal(batch.target_mask,
                                np.broadcast_to(np.arange(10)[:, None] == 9, (10, 7)))


def test_copy_task_asks_for_the_symbols_after_the_delay():
  length, delay, symbols = 3, 4, 6
  batch = data.copy_task(KEY, 5, length, delay, symbols, jnp.float32)
  codes = np.argmax(np.asarray(batch.xs), axis=-1)                       # [T, B]
  assert batch.xs.shape == (2 * length + delay, 5, symbols + 2)
  np.testing.assert_array_equal(codes[length + delay - 1], symbols + 1)  # the go marker
  np.testing.assert_array_equal(codes[length:length + delay - 1], symbols)
  np.testing.assert_array_equal(np.asarray(batch.targets)[length + delay:], codes[:length])
  mask = np.asarray(batch.target_mask)
  assert mask[length + delay:].all() and not mask[:length + delay].any()


def test_sines_target_is_the_next_input():
  batch = data.noisy_sines(KEY, 4, 20, dtype=jnp.float32)
  np.testing.assert_array_equal(batch.xs[1:], batch.targets[:-1])
  assert batch.target_mask is None


def test_sines_draw_amplitude_frequency_phase_and_noise_as_documented():
  """Without noise each row is ``a sin(w t + phi)``: recovered per row by least squares over a
  grid of ``w``, the draws fill ``a ~ U(0.5, 1)``, ``w ~ U(0.1, 0.6)``, ``phi ~ U(0, 2 pi)``;
  the noise of the same key is ``0.1 N(0, 1)``, independent of step and row."""
  clean = np.asarray(data.noisy_sines(KEY, 400, 120, noise=0.0).xs[..., 0])          # [T, B]
  noisy = np.asarray(data.noisy_sines(KEY, 400, 120).xs[..., 0])
  t = np.arange(120)[:, None]
  best = np.full(400, np.inf)
  amp, freq, phase = np.zeros(400), np.zeros(400), np.zeros(400)
  for w in np.linspace(0.05, 0.65, 1201):  # a sin(w t + phi) = c sin(w t) + s cos(w t)
    basis = np.concatenate([np.sin(w * t), np.cos(w * t)], axis=1)            # [T, 2]
    (c, s) = np.linalg.pinv(basis) @ clean                                    # [2, B]
    residual = np.sum((clean - basis @ np.stack([c, s])) ** 2, axis=0)
    better = residual < best
    best[better], freq[better] = residual[better], w
    amp[better], phase[better] = np.hypot(c, s)[better], (np.arctan2(s, c) % (2 * np.pi))[better]
  assert best.max() < 0.01  # every row is one sinusoid (a sum of squares of about 30)
  for values, low, high in ((amp, 0.5, 1.0), (freq, 0.1, 0.6), (phase, 0, 2 * np.pi)):
    assert low - 1e-3 <= values.min() and values.max() <= high + 1e-3
    assert values.min() < low + 0.1 * (high - low) and values.max() > high - 0.1 * (high - low)
    assert np.mean(values) == pytest.approx((low + high) / 2, abs=0.05 * (high - low))
  noise = noisy - clean
  assert np.std(noise) == pytest.approx(0.1, rel=0.03) and abs(np.mean(noise)) < 0.005
  assert abs(np.corrcoef(noise[1:].ravel(), noise[:-1].ravel())[0, 1]) < 0.03


def test_windows_are_contiguous_slices():
  series = jnp.arange(100)
  windows = data.random_windows(KEY, series, 6, 9)                      # [10, 6]
  assert windows.shape == (10, 6)
  np.testing.assert_array_equal(np.diff(np.asarray(windows), axis=0), 1)
  # Every window lies inside the series (an index past its end is clamped, not refused), and
  # every start that fits is drawn: 12 values give 3 windows of 10.
  many = np.asarray(data.random_windows(KEY, jnp.arange(12), 2000, 9))  # [10, 2000]
  np.testing.assert_array_equal(np.diff(many, axis=0), 1)
  assert set(many[0]) == {0, 1, 2}
  batch = data.text_batch(windows % 7, 7, jnp.float32)
  assert batch.xs.shape == (9, 6, 7)
  np.testing.assert_array_equal(np.argmax(np.asarray(batch.xs[1:]), -1), batch.targets[:-1])


def test_sample_rows_draws_every_row_number_below_num_rows_evenly():
  """7 rows, 7000 draws: every number in [0, 7) about 1000 times (Binomial(7000, 1/7): sd 29)
  and none outside it."""
  rows = np.asarray(data.sample_rows(KEY, 7, 7000))
  assert rows.min() >= 0 and rows.max() <= 6
  counts = np.bincount(rows, minlength=7)
  assert counts.size == 7 and np.all(np.abs(counts - 1000) < 150), counts


def test_digits_read_by_rows_and_by_pixels():
  pytest.importorskip("sklearn")
  images, labels = data.load_digits()
  assert images.shape == (1797, 8, 8) and 0 <= images.min() and images.max() <= 1
  rows, pixels = data.digit_sequences(images, "rows"), data.digit_sequences(images, "pixels")
  assert rows.shape == (8, 1797, 8) and pixels.shape == (64, 1797, 1)
  np.testing.assert_array_equal(rows[3, 10], images[10, 3])
  np.testing.assert_array_equal(pixels[8 * 3 + 5, 10, 0], images[10, 3, 5])
  batch = data.labelled_sequences(jnp.asarray(rows[:, :4]), jnp.asarray(labels[:4]))
  np.testing.assert_array_equal(batch.targets[-1], labels[:4])
  with pytest.raises(ValueError, match="read order"):
    data.digit_sequences(images, "columns")


def test_digits_hold_out_a_fixed_fifth_whatever_the_seed():
  """1797 images: 359 (a fifth) are the test set, the same for every seed, disjoint from the
  1438 that batches are drawn from; the baseline is the test set's most frequent class."""
  pytest.importorskip("sklearn")
  images, labels = data.load_digits()
  config = resolve_config("digits", batch_size=512)
  built = [build_task(config.replace(seed=seed), jax.random.key(seed)) for seed in (0, 5)]
  chex.assert_trees_all_equal(built[0].test, built[1].test)
  test_xs = np.asarray(built[0].test.xs)                                       # [8, 359, 8]
  assert test_xs.shape == (8, 359, 8) and built[0].train_size == 1438
  flat = {image.tobytes(): i for i, image in enumerate(images)}
  test_index = [flat[test_xs[:, n].tobytes()] for n in range(359)]               # [359]
  test_rows = set(test_index)
  assert len(test_rows) == 359
  np.testing.assert_array_equal(built[0].test.targets[-1], labels[test_index])
  train_xs = np.asarray(built[1].batches(0).xs)
  train_rows = {flat[train_xs[:, n].tobytes()] for n in range(512)}
  assert not train_rows & test_rows and len(train_rows) > 250
  counts = np.bincount(labels[sorted(test_rows)], minlength=10)
  assert built[0].baseline == pytest.approx(counts.max() / 359)


def binomial_tail(n: int, p: float, k: int) -> float:
  """``P(X >= k)`` for ``X ~ Binomial(n, p)``."""
  return 1.0 - sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k))


def test_digits_batches_draw_uniformly_from_the_1438_training_images():
  """Every image of 10 batches of 512 is one of the 1438 images outside the test set, and none is
  drawn far more often than uniform draws with replacement allow: each count is
  Binomial(5120, 1/1438) (mean 3.6), so the chance that any of the 1438 exceeds the bound (20)
  is under 1e-6. Row numbers drawn from all 1797 images would gather past the end of the training
  rows, which JAX clamps to the last one: that image would be drawn about 1000 times."""
  pytest.importorskip("sklearn")
  images, _ = data.load_digits()
  built = build_task(resolve_config("digits", batch_size=512), jax.random.key(3))
  row_of = {image.tobytes(): i for i, image in enumerate(images)}
  test_rows = {row_of[image.tobytes()] for image in np.asarray(built.test.xs).transpose(1, 0, 2)}
  train_rows = sorted(set(range(len(images))) - test_rows)
  assert len(train_rows) == 1438
  drawn = np.asarray([row_of[image.tobytes()] for step in range(10)
                      for image in np.asarray(built.batches(step).xs).transpose(1, 0, 2)])
  assert drawn.shape == (5120,) and set(drawn) <= set(train_rows)
  bound = next(k for k in range(5120) if 1438 * binomial_tail(5120, 1 / 1438, k + 1) < 1e-6)
  assert np.bincount(drawn).max() <= bound, (np.bincount(drawn).max(), bound)


def test_sunspots_are_the_yearly_series():
  pytest.importorskip("statsmodels")
  years = data.load_sunspots()
  assert years.shape == (309,) and years[0] == 5.0 and years.min() >= 0


def test_text_loads_the_default_corpus_and_rejects_bad_files(tmp_path):
  text = data.load_text()
  assert len(text) > 100_000 and "def" in text
  with pytest.raises(ValueError, match="does not exist"):
    data.load_text(str(tmp_path / "missing.txt"))
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="is empty"):
    data.load_text(str(tmp_path / "empty.txt"))
  (tmp_path / "one.txt").write_text("a")                  # nothing to predict from
  with pytest.raises(ValueError, match="is empty or one character long; it needs two or more"):
    data.load_text(str(tmp_path / "one.txt"))
  (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
  with pytest.raises(ValueError, match="cannot read text file .*latin1.txt: 'utf-8' codec"):
    data.load_text(str(tmp_path / "latin1.txt"))
  (tmp_path / "two.txt").write_text("ab")
  assert data.load_text(str(tmp_path / "two.txt")) == "ab"
  np.testing.assert_array_equal(data.encode_text("abca", "abc"), [0, 1, 2, 0])
  with pytest.raises(ValueError, match="vocabulary"):
    data.encode_text("abd", "abc")


def test_resolve_config_layers_task_defaults_and_options():
  config = resolve_config("adding", hidden_size=8, seed=None)
  assert config.hidden_size == 8 and config.activation == TASK_DEFAULTS["adding"]["activation"]
  assert config.seed == Config().seed
  with pytest.raises(ValueError, match="unknown task"):
    resolve_config("nonsense")
  assert set(TASK_DEFAULTS) == set(TASKS)


@pytest.mark.parametrize("task, metric, low, high", [
    ("adding", "mse", 0.15, 0.19),            # predicting 1.0: 1/6
    ("copy", "accuracy", 0.125, 0.125),       # chance: 1/8
    ("sine", "mse", 0.02, 0.2),               # repeat the last value
    ("digits", "accuracy", 0.09, 0.15),       # the most frequent class
    ("sunspots", "rmse", 20, 50),             # persistence
    ("text", "bits/char", 4, 6),              # unigram
])
def test_tasks_report_their_trivial_baseline(task, metric, low, high):
  pytest.importorskip("sklearn")
  pytest.importorskip("statsmodels")
  config = resolve_config(task, batch_size=4, seq_len=5 if task == "copy" else 20)
  built = build_task(config, KEY)
  assert built.metric == metric and low <= built.baseline <= high
  batch = built.batches(3)
  chex.assert_trees_all_equal(batch, built.batches(3))
  assert not np.array_equal(np.asarray(batch.xs), np.asarray(built.batches(4).xs))  # fresh
  chex.assert_shape(batch.xs, (None, 4, built.input_size))
  chex.assert_type(batch.xs, jnp.float32)


def test_config_is_frozen_and_replace_checks_again():
  config = resolve_config("adding", hidden_size=8)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.hidden_size = 9
  assert config.replace(hidden_size=9).hidden_size == 9 and config.hidden_size == 8
  with pytest.raises(ValueError, match="--hidden-size must be a whole number from 1"):
    config.replace(hidden_size=0)
  with pytest.raises(TypeError):
    config.replace(hidden=9)                       # not a field


@pytest.mark.parametrize("field, value, option", [
    ("task", "nonsense", "unknown task 'nonsense'"),
    ("activation", "sigmoid", "unknown activation 'sigmoid'"),
    ("optimizer", "lbfgs", "unknown optimizer 'lbfgs'"),
    ("init", "zeros", "unknown init 'zeros'"),
    ("gradient", "numeric", "unknown gradient 'numeric'"),
    ("dtype", "float16", "unknown dtype 'float16'"),
    ("read", "columns", "unknown read 'columns'"),
    ("steps", MAX_STEPS + 1, "--steps must be a whole number from 1 to 2147483647"),
    ("steps", 2.0, "--steps must be a whole number"),
    ("batch_size", True, "--batch-size must be a whole number"),
    ("num_layers", 0, "--layers must be a whole number"),
    ("save_every", 0, "--save-every must be a whole number"),
    ("keep", "3", "--keep must be a whole number"),
    ("seed", -1, "--seed must be a whole number from 0 to 4294967295"),
    ("seed", 2**32, "--seed must be a whole number from 0 to 4294967295"),
    ("learning_rate", 0.0, "--lr must be a finite number > 0"),
    ("learning_rate", float("inf"), "--lr must be a finite number > 0"),
    ("learning_rate", "0.1", "--lr must be a finite number > 0"),
    ("clip_norm", -1.0, "--clip-norm must be a finite number >= 0"),
    ("dropout", 1.0, "--dropout must be a finite number in [0, 1)"),
    ("bidirectional", 1, "--bidirectional must be true or false"),
    ("vocab", None, "vocab must be a string"),
    ("text_file", 3, "text_file must be a string"),
])
def test_config_names_the_option_of_a_bad_value(field, value, option):
  with pytest.raises(ValueError) as error:
    Config(**{field: value})
  assert option in str(error.value)


def test_config_accepts_the_edges_of_every_range():
  edges = dict(steps=MAX_STEPS, batch_size=1, hidden_size=1, seq_len=1, delay=1, eval_every=1,
               save_every=1, keep=1, seed=2**32 - 1, clip_norm=0.0, learning_rate=FLOAT32_LOW)
  config = Config(**edges)
  assert {k: getattr(config, k) for k in edges} == edges
  assert Config(num_layers=MAX_STEPS, dropout=0.999, clip_norm=FLOAT32_HIGH,
                seed=0).dropout == 0.999
  for field, value in (("learning_rate", FLOAT32_LOW / 2), ("clip_norm", FLOAT32_HIGH * 2)):
    with pytest.raises(ValueError, match="of a magnitude float32 holds"):
      Config(**{field: value})
  assert Config(text_file=None).text_file is None and Config(text_file="a.txt").text_file


def test_config_rules_between_fields():
  with pytest.raises(ValueError, match="--dropout acts between layers"):
    Config(dropout=0.5)
  with pytest.raises(ValueError, match="--gradient bptt .* takes no --dropout"):
    Config(num_layers=2, dropout=0.5, gradient="bptt")
  assert Config(num_layers=2, dropout=0.5).dropout == 0.5


def test_config_round_trips_through_json_and_reads_a_0_2_0_config():
  config = resolve_config("text", hidden_size=8, text_file="corpus.txt", vocab="ab",
                          data_fingerprint="0123")
  saved = json.loads(json.dumps(config.asdict()))
  assert tuple(saved) == FIELDS and from_saved(saved) == config
  old = dict(saved)
  old["checkpoint_every"] = old.pop("save_every")              # 0.2.0's name
  assert RENAMED == {"checkpoint_every": "save_every"} and from_saved(old) == config
  with pytest.raises(ValueError, match="another version of jaxrnn"):
    from_saved({**saved, "colour": "red"})
  with pytest.raises(ValueError, match="another version of jaxrnn"):
    from_saved({k: v for k, v in saved.items() if k != "keep"})
  with pytest.raises(ValueError, match="not a JSON object"):
    from_saved([1, 2])
  with pytest.raises(ValueError, match="--hidden-size"):
    from_saved({**saved, "hidden_size": "8"})


def test_resolve_config_refuses_unknown_options():
  with pytest.raises(ValueError, match="unknown options"):
    resolve_config("adding", checkpoint_every=5)


def test_sunspots_are_normalised_by_the_training_years_only():
  """The test years (the last 20%) must not leak into the normalisation."""
  pytest.importorskip("statsmodels")
  years = data.load_sunspots()
  train = years[:int(0.8 * len(years))]
  built = build_task(resolve_config("sunspots", batch_size=4, seq_len=20), KEY)
  np.testing.assert_allclose(np.asarray(built.test.xs[:, 0, 0]),
                             ((years - train.mean()) / train.std())[:-1], rtol=1e-5, atol=1e-6)


def test_the_text_baseline_is_the_unigram_model_scored_on_the_test_targets():
  """Bits per character of the add-one unigram model of the training text (the first 90%),
  averaged over the characters the test asks for."""
  config = resolve_config("text", batch_size=4, seq_len=20)
  built = build_task(config, KEY)
  text = data.load_text()
  vocab = sorted(set(text))
  codes = np.array([vocab.index(c) for c in text[:int(0.9 * len(text))]])
  counts = np.bincount(codes, minlength=len(vocab)) + 1.0
  targets = np.asarray(built.test.targets)
  assert built.baseline == pytest.approx(-np.mean(np.log2(counts / counts.sum())[targets]),
                                         rel=1e-12)
  assert built.metric == "bits/char" and built.score({"loss": 3 * np.log(2)}) == pytest.approx(3)


def test_text_tests_on_the_held_out_tenth_and_trains_on_windows_of_the_rest(tmp_path):
  """6000 characters: the test batch is the held-out last 600 in consecutive chunks of 256
  steps (2 fit), each step's target the next character; training windows are slices of the
  first 5400 characters, targets shifted by one: 5380 windows of 20 steps (21 characters)."""
  rng = np.random.default_rng(0)
  text = "".join(rng.choice(list("abcdefgh"), 6000))
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(text, encoding="utf-8")
  built = build_task(resolve_config("text", batch_size=64, seq_len=20, text_file=str(corpus)), KEY)
  decode = lambda codes: "".join(built.vocab[i] for i in np.asarray(codes))
  assert built.vocab == "abcdefgh" and built.train_size == 5400 - 20
  xs, targets = np.asarray(built.test.xs).argmax(-1).T, np.asarray(built.test.targets).T
  assert [decode(row) for row in xs] == [text[5400:5656], text[5656:5912]]
  assert [decode(row) for row in targets] == [text[5401:5657], text[5657:5913]]
  batch = built.batches(0)
  inputs, targets = np.asarray(batch.xs).argmax(-1).T, np.asarray(batch.targets).T
  for row_in, row_out in zip(inputs, targets):
    assert decode(row_in)[1:] == decode(row_out)[:-1] and len(row_in) == 20
    start = text.find(decode(row_in) + decode(row_out)[-1])
    assert 0 <= start <= 5400 - 21
  starts = {text.find(decode(row)) for row in inputs}
  assert len(starts) > 40                             # 64 windows at random offsets


def test_the_sunspots_baseline_and_score_are_in_sunspot_numbers():
  """Persistence (next year = this year) over the test years, and a model's RMSE in sunspot
  numbers: one normalised unit is one standard deviation of the training years."""
  pytest.importorskip("statsmodels")
  years = data.load_sunspots()
  n = int(0.8 * len(years))
  built = build_task(resolve_config("sunspots", batch_size=4, seq_len=20), KEY)
  assert built.baseline == pytest.approx(np.sqrt(np.mean((years[n:] - years[n - 1:-1]) ** 2)))
  assert built.score({"mse": 4.0}) == pytest.approx(2 * years[:n].std())
  # the test asks for each of the last 62 years, forecast from all the years before it
  mask = np.asarray(built.test.target_mask)[:, 0]                              # [308]
  assert np.flatnonzero(mask).tolist() == list(range(n - 1, len(years) - 1)) and mask.sum() == 62
  normalised = (years - years[:n].mean()) / years[:n].std()
  np.testing.assert_allclose(np.asarray(built.test.targets)[n - 1:, 0, 0], normalised[n:],
                             rtol=1e-6)


def test_generators_refuse_sizes_that_make_no_task():
  """The adding problem needs a marker in each half (T >= 2); the copy task something to copy,
  a delay and two symbols. The smallest valid sizes are accepted."""
  with pytest.raises(ValueError, match="num_steps must be at least 2, got 1"):
    data.adding_problem(KEY, 3, 1)
  assert data.adding_problem(KEY, 3, 2).xs.shape == (2, 3, 2)
  for length, delay, symbols in ((0, 1, 2), (1, 0, 2), (1, 1, 1)):
    with pytest.raises(ValueError, match=f"got {length}, {delay}, {symbols}"):
      data.copy_task(KEY, 3, length, delay, symbols)
  assert data.copy_task(KEY, 3, 1, 1, 2).xs.shape == (3, 3, 4)
