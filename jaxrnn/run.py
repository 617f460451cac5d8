"""A training run of the command line: fresh model, checkpoints, metrics, summary.

A run is a :class:`jaxrnn.tasks.Config` trained into a run directory:
``metrics.jsonl`` (one JSON record per step), ``checkpoints/`` (orbax, the
config saved beside each), and at the end ``summary.json`` and ``loss.png``.
Everything a run computes is a pure function of its config: the data key,
the parameter key and the dropout key all come from ``config.seed``, so a
resumed run is bit-identical to an uninterrupted one.

Faults: one process at a time owns a run directory (an OS lock on
``RUN_DIR/lock``, released when the process ends, however it ends); nothing
non-finite is ever saved; a damaged newest checkpoint is skipped for the
newest one that restores; a torn last line of ``metrics.jsonl`` is dropped;
a run refuses to resume on data that changed; a finished run whose summary
or plot is missing gets them back from ``resume``.

A run may be one job of several processes (``jax.distributed``, the
command's ``--coordinator``): every process computes the same data, feeds
its own rows of each batch to its devices and takes part in each orbax save
and restore (orbax writes the replicated state once); process 0 alone holds
the lock, writes ``metrics.jsonl``, the summary and the plot, and prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn import checkpoint
from jaxrnn.init import init_params
from jaxrnn.parallel import as_mesh, batch_mesh, local_copy, placed_batches, replicate
from jaxrnn.params import RNNParams
from jaxrnn.spec import ComputeSpec, LossSpec, ModelSpec
from jaxrnn.tasks import Config, Task, build_task, higher_is_better
from jaxrnn.train import fit, make_eval_step, make_optimizer


class RunError(Exception):
  """A run that cannot start or go on for a reason the user can fix: one line, exit status 2."""


class TrainingStopped(Exception):
  """A non-finite loss, gradient or update: one line, exit status 1."""


class JobFailed(TrainingStopped):
  """Another process of a multi-process job died (its collectives fail): one line, exit status 1."""


def is_primary() -> bool:
  """Whether this process writes the run's files and prints (process 0 of a job; any lone one)."""
  return jax.process_index() == 0


def run_keys(config: Config) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(data_key, init_key, dropout_key)`` of a run, all from ``config.seed``."""
  data_key, init_key = jax.random.split(jax.random.key(config.seed))
  return data_key, init_key, jax.random.fold_in(init_key, 1)


def specs(config: Config, task: Task) -> tuple[ModelSpec, LossSpec, ComputeSpec]:
  """The model, loss and compute specs of a run (losses averaged over live steps)."""
  return (ModelSpec(config.activation, dropout=config.dropout), LossSpec(task.loss, "mean"),
          ComputeSpec(gradient=config.gradient))


def fresh_model(config: Config, input_size: int,
                output_size: int) -> tuple[RNNParams, optax.GradientTransformation]:
  """``(params, optimizer)`` at the start of a run of ``config`` (params drawn from its seed).

  The optimizer always clips (``clip_norm=0``: by ``inf``, i.e. not at all),
  so its state has the same structure whatever ``--clip-norm`` a resume sets.
  """
  params = init_params(run_keys(config)[1], input_size, config.hidden_size, output_size,
                       config.init, jnp.dtype(config.dtype), num_layers=config.num_layers,
                       bidirectional=config.bidirectional)
  return params, make_optimizer(config.optimizer, config.learning_rate,
                                config.clip_norm or float("inf"))


def check_memory(config: Config, task: Task) -> None:
  """Raises :class:`RunError` when the params, optimizer state and activations of ``config``
  clearly exceed this machine's memory (a cheap estimate, before anything is allocated)."""
  hidden, dirs, layers = config.hidden_size, 1 + config.bidirectional, config.num_layers
  width = dirs * hidden
  num_params = (dirs * hidden * (task.input_size + hidden + 1)
                + (layers - 1) * dirs * hidden * (width + hidden + 1)
                + task.output_size * (width + 1))
  steps = max(config.seq_len, int(task.test.xs.shape[0]))
  activations = steps * max(config.batch_size, int(task.test.xs.shape[1])) * width * layers * 3
  needed = (4 * num_params + activations) * jnp.dtype(config.dtype).itemsize
  available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if needed > available:
    raise RunError(f"this model needs about {needed / 2**30:.1f} GiB (parameters, optimizer "
                   f"state, activations), more than the {available / 2**30:.1f} GiB of this "
                   "machine: lower --hidden-size, --layers or --batch-size")


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
  """Holds an exclusive OS lock on ``run_dir/lock`` (creating ``run_dir``) for the block.

  Raises:
    RunError: another process holds it (the message names its pid), or
      ``run_dir`` cannot be created.
  """
  try:
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / "lock", "a+", encoding="utf-8")
  except OSError as error:
    raise RunError(f"cannot use {run_dir} as a run directory: {checkpoint.reason(error)}") from None
  with handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "unknown"
      raise RunError(f"{run_dir} is in use by process {holder} (a train or resume); wait for it "
                     "to finish or use another --run-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    yield


def checkpoint_state(params: Any, opt_state: Any, seed: int, step: int) -> dict[str, Any]:
  """What a checkpoint holds besides the config: params, optimizer state, RNG key, step
  (in a job of several processes, replicated over all its devices: orbax writes it once)."""
  state = {"params": params, "opt_state": opt_state,
           "key": jax.random.key_data(jax.random.key(seed)), "step": jnp.asarray(step, jnp.int32)}
  return replicate(state, batch_mesh()) if jax.process_count() > 1 else state


def restore_state(checkpoints: Any, step: int, config: Config, params: Any, optimizer: Any,
                  run_dir: Path) -> dict[str, Any]:
  """The state of checkpoint ``step``, checked against the shapes ``config`` implies."""
  like = checkpoint_state(params, optimizer.init(params), config.seed, 0)
  try:
    state = checkpoint.restore(checkpoints, step, like)
  except ValueError as error:
    if "shape" not in str(error).lower():
      raise
    raise RunError(f"checkpoint {step} in {run_dir} does not fit its config: "
                   f"{checkpoint.reason(error)}") from None
  return state


def require_extras(*modules: str) -> None:
  """Imports ``modules`` now, or fails with a one-line hint to install the ``tasks`` extra."""
  for name in modules:
    try:
      importlib.import_module(name)
    except ImportError:
      raise RunError(f"this command needs {name.split('.')[0]}: "
                     "pip install 'jaxrnn[tasks]'") from None


def load_task(config: Config) -> Task:
  """:func:`build_task` with the run's data key; bad data is a :class:`RunError`."""
  if config.dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  try:
    task = build_task(config, run_keys(config)[0])
  except ImportError as error:
    raise RunError(f"task {config.task} needs {error.name}: pip install 'jaxrnn[tasks]'") from None
  except ValueError as error:
    raise RunError(str(error)) from None
  if config.bidirectional and task.predicts_next:
    raise RunError(f"task {config.task} predicts the next input, which a bidirectional model "
                   "reads: drop --bidirectional")
  return task


def run_config(run_dir: Path) -> tuple[Config, int]:
  """The config of the newest checkpoint in ``run_dir`` whose config reads, and that step."""
  if not (run_dir / "checkpoints").is_dir():
    raise RunError(f"{run_dir} is not a run directory (no checkpoints/ in it)")
  require_extras("orbax.checkpoint")
  try:
    checkpoints = checkpoint.manager(run_dir / "checkpoints")
  except FileNotFoundError as error:  # a running train deleted a checkpoint while orbax listed it
    raise RunError(f"{run_dir} changed while being read ({checkpoint.reason(error)}); is a run "
                   "writing to it? Try again") from None
  try:
    for step in checkpoint.newest_first(checkpoints):
      try:
        with checkpoint.quiet():
          saved = checkpoint.saved_config(checkpoints, step)
      except Exception:  # a damaged file: restore_newest sets it aside and says so
        continue
      if not isinstance(saved, dict) or set(saved) != set(Config._fields):
        raise RunError(f"the checkpoint in {run_dir} was written by another version of jaxrnn")
      return Config(**saved), step
  finally:
    checkpoints.close()
  raise RunError(f"{run_dir} holds no complete checkpoint")


def restore_newest(checkpoints: Any, config: Config, params: Any, optimizer: Any,
                   run_dir: Path) -> dict[str, Any]:
  """The state of the newest checkpoint whose config and state both restore cleanly.

  A damaged checkpoint is moved to ``RUN_DIR/damaged/STEP`` (nothing is
  deleted) and named in one line on stderr; the run goes on from the next older one.
  """
  for step in checkpoint.newest_first(checkpoints):
    try:
      with checkpoint.quiet():
        checkpoint.saved_config(checkpoints, step)
        return restore_state(checkpoints, step, config, params, optimizer, run_dir)
    except RunError:
      raise
    except Exception as error:  # a damaged file: orbax, tensorstore, JSON and OS errors alike
      if is_primary():
        kept = checkpoint.set_aside(checkpoints, step, run_dir / "damaged")
        print(f"jaxrnn: checkpoint {step} in {run_dir} does not restore "
              f"({checkpoint.reason(error)}); moved it to {kept}, going on from an older one",
              file=sys.stderr)
  raise RunError(f"no checkpoint in {run_dir} restores; start again with jaxrnn train")


def existing_run_message(run_dir: Path, config: Config, saved: dict[str, Any]) -> str:
  """Why ``train`` refuses ``run_dir``: it already holds this run, or one of another config."""
  diff = [f"{k} {saved.get(k)!r} there, {v!r} here" for k, v in config._asdict().items()
          if saved.get(k, Config._field_defaults.get(k)) != v]
  if not diff:
    return f"{run_dir} already holds this run; continue it with: jaxrnn resume {run_dir}"
  return (f"{run_dir} holds a checkpoint from a different config ({'; '.join(diff)}); "
          "use another --run-dir")


def read_metrics(path: Path, up_to: int) -> list[dict[str, Any]]:
  """The records of ``metrics.jsonl`` with ``step <= up_to``; none when there is no file.

  A torn last line (a process killed while writing it) is dropped.
  """
  if not path.exists():
    return []
  records = []
  for line in path.read_text(errors="replace").splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= up_to:
      records.append(record)
  return records


def plot_run(records: list[dict[str, Any]], task: Task, path: Path) -> None:
  """Saves the training loss and the test metric (against the baseline) per step as a PNG."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(10, 3.8))
  ax_loss, ax_test = fig.subplots(1, 2)
  test = [r for r in records if "test" in r]
  records = [r for r in records if "loss" in r]
  steps, loss = np.array([r["step"] for r in records]), np.array([r["loss"] for r in records])
  width = max(1, len(loss) // 50)
  smooth = np.convolve(loss, np.ones(width) / width, mode="valid")
  ax_loss.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8)
  ax_loss.plot(steps[width - 1:], smooth, color="tab:blue", label=f"mean of {width} steps")
  ax_loss.legend()
  ax_loss.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
  ax_test.plot([r["step"] for r in test], [r["test"] for r in test], "o-", label="model")
  ax_test.axhline(task.baseline, color="gray", ls="--", label=f"baseline ({task.baseline_name})")
  ax_test.set(xlabel="step", ylabel=f"test {task.metric}", title=f"held-out {task.metric}")
  if not higher_is_better(task.metric):
    ax_test.set_yscale("log")
  ax_test.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def print_table(config: Config, task: Task, score: float, steps: int, seconds: float) -> None:
  """Prints the final metric next to the trivial baseline."""
  better = score > task.baseline if higher_is_better(task.metric) else score < task.baseline
  print(f"\n{config.task}: {steps} steps in {seconds:.1f} s")
  print(f"  {'':32} {'test ' + task.metric:>14}")
  print(f"  {'model':32} {score:>14.4f}")
  print(f"  {'baseline (' + task.baseline_name + ')':32} {task.baseline:>14.4f}")
  change = (f"{(score - task.baseline) / task.baseline:>+14.1%}" if task.baseline
            else f"{score - task.baseline:>+14.4f}")
  print(f"  {'model vs baseline':32} {change}  "
        f"({'beats' if better else 'does not beat'} the baseline)")


def finish(config: Config, task: Task, score: float, records: list[dict[str, Any]],
           run_dir: Path | None, steps_run: int, seconds: float) -> dict[str, Any]:
  """Prints the final test ``score`` against the baseline and writes ``summary.json`` and
  ``loss.png`` (on the primary process only); returns the summary."""
  summary = {"task": config.task, "metric": task.metric, "test": score, "baseline": task.baseline,
             "baseline_name": task.baseline_name, "steps": config.steps, "seconds": seconds}
  if not is_primary():
    return summary
  print_table(config, task, score, steps_run, seconds)
  if run_dir is not None:
    try:
      plot_run(records, task, run_dir / "loss.png")
      (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    except OSError as error:
      raise RunError(f"could not write the summary and plot into {run_dir}: "
                     f"{checkpoint.reason(error)}; the checkpoints are complete, so "
                     f"'jaxrnn resume {run_dir}' writes them later") from None
    print(f"wrote {run_dir}/metrics.jsonl, loss.png, summary.json, checkpoints/")
  return summary


def largest_divisor(size: int, limit: int) -> int:
  """The largest ``d <= limit`` that divides ``size`` (1 at least)."""
  return next(d for d in range(max(1, min(limit, size)), 0, -1) if size % d == 0)


MIN_SPLIT_WORK = 2**18
"""Multiply-adds of ``W_hh h_{t-1}`` per time step and device below which a split does not pay.

Measured on a 2-core Xeon, one training step on 2 devices against 1
(``benchmarks/train_step.py --configs split_8k ...``,
``results/split_threshold.json``): at ``(B/2) H^2`` = 8k and 33k per device
the split ran at 0.83x and 0.80x; at 66k 1.03x; at 131k (B = 16, H = 128)
1.08x; at 262k (B = 32, H = 128) 1.26x. At 131k the demo (B = 64, H = 64)
ran its step at 1.00x but its whole command slower split (1500 steps in
5.5-5.7 s against 4.8-4.9 s), so it stays on one device.
"""


def device_counts(requested: int | None, config: Config, test_size: int) -> tuple[int, int]:
  """``(train, test)``: the devices the training batch and the test batch are split over.

  In a job of several processes every device of the job is used (``requested``
  may only repeat their count, and it must divide the batch size) and the test
  batch is scored by each process alone. Otherwise ``requested`` must exist.
  ``None`` (the default) splits over every device
  JAX has (which the command line makes every CPU core) when each device's
  share of the recurrence, ``(B/n) L D H^2`` multiply-adds per step, is at
  least :data:`MIN_SPLIT_WORK`, and uses one device otherwise (a small
  model's per-step sync costs more than the second core gives). The
  training batch uses the largest count ``<= requested`` that divides the
  batch size (with a one-line note on stderr when an explicit request gets
  fewer), the test batch the largest that divides its size too.
  """
  available = jax.device_count()
  batch_size = config.batch_size
  if jax.process_count() > 1:
    job = f"the {available} devices of this {jax.process_count()}-process job"
    if requested not in (None, available):
      raise RunError(f"--devices {requested}: a job of several processes uses all {job}")
    if batch_size % available:
      raise RunError(f"batch size {batch_size} does not split over {job}; "
                     f"use a multiple of {available}")
    return available, 1
  if requested is None:
    work = (config.num_layers * (1 + config.bidirectional) * config.hidden_size ** 2
            * batch_size // largest_divisor(batch_size, available))
    return (1, 1) if work < MIN_SPLIT_WORK else device_counts(available, config, test_size)
  if requested < 1:
    raise RunError("--devices must be at least 1")
  if requested > available:
    raise RunError(f"--devices {requested}, but this machine has {available} device(s) "
                   f"({jax.default_backend()}); use --devices {available} or fewer")
  train = largest_divisor(batch_size, requested)
  if train < requested:
    print(f"jaxrnn: batch size {batch_size} does not split over {requested} devices; "
          f"training on {train}", file=sys.stderr)
  return train, largest_divisor(test_size, train)


def train_run(config: Config, run_dir: Path | None, resume: bool = False,
              progress: bool = True, task: Task | None = None,
              overrides: dict[str, Any] | None = None,
              devices: int | None = None) -> dict[str, Any]:
  """Trains ``config`` (from the newest good checkpoint in ``run_dir`` when ``resume``).

  Without a ``run_dir`` nothing is written (the demo). Otherwise the run holds
  the directory's lock throughout; every step's metrics go to
  ``metrics.jsonl``, the test metric every ``eval_every`` steps, a checkpoint
  every ``checkpoint_every`` steps and at the end, then ``summary.json`` and
  ``loss.png``. A step whose update is non-finite is never saved. ``task``
  is ``load_task(config)`` when ``None``. ``overrides`` (``resume`` only:
  the config fields the user changed, e.g. the learning rate) are recorded in
  ``metrics.jsonl``. ``devices``: how many devices to split each batch over
  (:func:`device_counts`; ``None``: all). It is not part of the config: a
  run resumed on another device count goes on, equal to float rounding (the
  sums of the split gradient are added in another order), and bit-identical
  on the same count.

  Returns:
    The summary.
  """
  task = load_task(config) if task is None else task
  check_memory(config, task)
  counts = device_counts(devices, config, int(task.test.xs.shape[1]))
  if run_dir is None:
    return _train(config, None, resume, progress, task, overrides, counts)
  require_extras("orbax.checkpoint", "matplotlib")
  with locked(run_dir) if is_primary() else contextlib.nullcontext():
    return _train(config, run_dir, resume, progress, task, overrides, counts)


def _train(config: Config, run_dir: Path | None, resume: bool, progress: bool, task: Task,
           overrides: dict[str, Any] | None, counts: tuple[int, int]) -> dict[str, Any]:
  train_mesh, eval_mesh = (None if n == 1 else n for n in counts)
  if resume and config.data_fingerprint != task.fingerprint:
    raise RunError(f"the data of {config.task} changed since this run started (fingerprint "
                   f"{config.data_fingerprint or 'none'}, now {task.fingerprint or 'none'}); "
                   "resume on the same data or start a new run")
  config = config._replace(vocab=task.vocab, data_fingerprint=task.fingerprint)
  params, optimizer = fresh_model(config, task.input_size, task.output_size)
  model, loss, compute = specs(config, task)
  opt_state, start = optimizer.init(params), 0
  eval_step = make_eval_step(model=model, loss=loss, mesh=eval_mesh)

  def test_score(params) -> float:
    return task.score({k: float(v) for k, v in eval_step(local_copy(params), task.test).items()})

  checkpoints = None
  primary = is_primary()
  metrics_path = None if run_dir is None or not primary else run_dir / "metrics.jsonl"
  if run_dir is not None:
    checkpoints = checkpoint.manager(run_dir / "checkpoints", config.keep)
    if resume:
      try:
        state = restore_newest(checkpoints, config, params, optimizer, run_dir)
      except RunError:
        checkpoints.close()
        raise
      params, opt_state, start = state["params"], state["opt_state"], int(state["step"])
      if start >= config.steps:
        checkpoints.close()
        if (run_dir / "summary.json").exists() and (run_dir / "loss.png").exists():
          raise RunError(f"{run_dir} is complete at step {start}; pass --steps to train longer")
        if primary:
          print(f"{run_dir} is complete at step {start}; writing its missing summary and plot")
        return finish(config, task, test_score(params), read_metrics(metrics_path, start),
                      run_dir, 0, 0.0)
    else:
      last = checkpoint.latest_step(checkpoints)
      if last is not None:
        saved = checkpoint.saved_config(checkpoints, last)
        checkpoints.close()
        raise RunError(existing_run_message(run_dir, config, saved))
  records = [] if metrics_path is None else read_metrics(metrics_path, start)
  if overrides:
    records.append({"step": start, "resumed_with": overrides})
  if metrics_path is not None:
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
  log = None if metrics_path is None else metrics_path.open("a")
  last_saved = [start if resume else None]

  def where_saved() -> str:
    return ("no checkpoint was written" if last_saved[0] is None
            else f"the last good checkpoint, after {last_saved[0]} steps, is in {run_dir}")

  def callback(step: int, params, opt_state, values: dict[str, float]) -> None:
    done = step + 1
    record = {"step": done, **values}
    if done % config.eval_every == 0 or done == config.steps:
      record["test"] = test_score(params)
    records.append(record)
    if log is not None:
      log.write(json.dumps(record) + "\n")
    if checkpoints is not None and (done % config.checkpoint_every == 0 or done == config.steps):
      if log is not None:
        log.flush()
      try:
        checkpoint.save(checkpoints, done, checkpoint_state(params, opt_state, config.seed, done),
                        config._asdict())
      except ValueError as error:
        raise TrainingStopped(f"training stopped: {error}; {where_saved()}") from None
      except checkpoint.CheckpointError as error:
        raise RunError(f"{error}; {where_saved()}") from None
      last_saved[0] = done

  if primary:
    job = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    print(f"{config.task}: {config.steps - start} steps from step {start}, batch "
          f"{config.batch_size}, {config.num_layers} layer(s)"
          f"{' bidirectional' if config.bidirectional else ''} of H={config.hidden_size}, "
          f"{config.activation}/{config.init}, {config.optimizer} lr={config.learning_rate}, "
          f"{counts[0]} device(s){job}" + (f", run dir {run_dir}" if run_dir else ""), flush=True)
  batches = task.batches if train_mesh is None else placed_batches(task.batches,
                                                                   as_mesh(train_mesh))
  began = time.perf_counter()
  try:
    result = fit(params, optimizer, batches, config.steps - start, model=model, loss=loss,
                 compute=compute, key=run_keys(config)[2] if config.dropout else None,
                 opt_state=opt_state, start_step=start, progress=progress and primary,
                 callback=callback,
                 sequences_per_step=config.batch_size, mesh=train_mesh)
  except FloatingPointError as error:
    raise TrainingStopped(f"training stopped: {error}; {where_saved()}") from None
  except jax.errors.JaxRuntimeError as error:
    if jax.process_count() == 1:
      raise
    raise JobFailed(f"training stopped: another process of this job failed "
                    f"({checkpoint.reason(error)}); {where_saved()}: start every process "
                    "again with jaxrnn resume") from None
  except OSError as error:
    raise RunError(f"could not write {metrics_path}: {checkpoint.reason(error)}; "
                   f"{where_saved()}") from None
  finally:
    if log is not None:
      log.close()
    if checkpoints is not None:
      checkpoints.close()
  return finish(config, task, test_score(result.params), records, run_dir,
                config.steps - start, time.perf_counter() - began)
