"""A training run of the command line: open (fresh or resumed), the loop, finish. All its keys
come from ``config.seed``, so a resumed run is bit-identical to an uninterrupted one; in a
multi-process job only process 0 holds the lock, writes the files and prints."""

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrnn.app import checkpoint
from jaxrnn.app.config import Config
from jaxrnn.app.plots import plot_run
from jaxrnn.app.rundir import (JobFailed, RunError, TrainingStopped, checkpoint_state, is_primary,
                               locked, read_metrics, require_extras, restore_newest,
                               existing_run_message)
from jaxrnn.app.tasks import TEST_SEQUENCES, Task, build_task, higher_is_better
from jaxrnn.checks import device_memory
from jaxrnn.init import init_params
from jaxrnn.parallel import as_mesh, local_copy, placed_batches
from jaxrnn.pytrees import RNNParams, Shape
from jaxrnn.spec import (ComputeSpec, InitSpec, LossSpec, ModelSpec, resolve_checkpoint,
                         step_memory)
from jaxrnn.train import fit, make_eval_step, make_optimizer, make_train_step

MIN_SPLIT_WORK = 2**18
"""Multiply-adds of ``W_hh h_{t-1}`` per step and device below which a split does not pay."""


def run_keys(config: Config) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(data_key, init_key, dropout_key)`` of a run, all from ``config.seed``."""
  data_key, init_key = jax.random.split(jax.random.key(config.seed))
  return data_key, init_key, jax.random.fold_in(init_key, 1)


def fresh_model(config: Config, input_size: int,
                output_size: int) -> tuple[RNNParams, optax.GradientTransformation]:
  """``(params, optimizer)`` at the start of a run; the optimizer always clips (by ``inf`` for
  ``clip_norm=0``), so its state has one structure whatever ``--clip-norm`` a resume sets. With
  ``warmup`` steps the learning rate rises linearly over them, ``lr * min(1, (step + 1) /
  warmup)``: Adam's first steps move every weight by ``~lr`` at once, which blows up an IRNN's
  ``W_hh = I`` over 50 steps (loss 1.4e5 at step 2 of ``adding`` without it)."""
  params = init_params(run_keys(config)[1], input_size, config.hidden_size, output_size,
                       num_layers=config.num_layers, bidirectional=config.bidirectional,
                       init=InitSpec(config.init), dtype=jnp.dtype(config.dtype))
  rate, warmup = config.learning_rate, config.warmup
  schedule = rate if not warmup else lambda step: rate * jnp.minimum(1.0, (step + 1) / warmup)
  return params, make_optimizer(config.optimizer, schedule, config.clip_norm or float("inf"))


def check_memory(config: Config) -> None:
  """Raises :class:`RunError` when ``config`` cannot fit in this machine's memory on any path:
  the training step as the library runs it (:func:`jaxrnn.spec.resolve_checkpoint` chunks it
  where storing every state would not fit) and the forward pass over the test sequences, both
  by :func:`jaxrnn.spec.step_memory` (the task's ``I + O`` taken as 16)."""
  shape = Shape(8, config.hidden_size, 8, config.num_layers, 1 + config.bidirectional)
  steps = {"copy": 2 * config.seq_len + config.delay, "digits": 64}.get(config.task, config.seq_len)
  itemsize, batch = jnp.dtype(config.dtype).itemsize, config.batch_size
  every = resolve_checkpoint(ComputeSpec(gradient=config.gradient), shape, steps, batch, itemsize)
  needed = step_memory(shape, steps, batch, itemsize, every, gradient=config.gradient)
  if config.task != "text":
    needed += step_memory(shape, steps, TEST_SEQUENCES, itemsize, None, training=False)
  available = device_memory()
  if needed > available:
    raise RunError(f"this run needs about {needed / 2**30:.1f} GiB (data, parameters, optimizer "
                   f"state, activations), more than the {available / 2**30:.1f} GiB of this "
                   "machine: lower --hidden-size, --layers, --batch-size or --seq-len")


def load_task(config: Config) -> Task:
  """:func:`build_task` with the run's data key; bad data is a :class:`RunError`."""
  if config.dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  check_memory(config)
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


def largest_divisor(size: int, limit: int) -> int:
  """The largest ``d <= limit`` that divides ``size`` (1 at least)."""
  return next(d for d in range(max(1, min(limit, size)), 0, -1) if size % d == 0)


def device_counts(requested: int | None, config: Config, test_size: int) -> tuple[int, int]:
  """``(train, test)``: the device counts the two batches are split over (in a multi-process job,
  all its devices and one). ``None`` means every device when each one's share, ``(B/n) L D H^2``
  multiply-adds per step, reaches :data:`MIN_SPLIT_WORK`, else one; each batch gets the largest
  count ``<= requested`` dividing its size. :class:`RunError` for a count no run can use."""
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


class Opened(NamedTuple):
  """A run ready for its loop: the state to start from, and where it is written."""
  params: RNNParams
  opt_state: Any
  start: int
  checkpoints: Any
  records: list[dict[str, Any]]


def open_run(config: Config, task: Task, run_dir: Path | None, resume: bool,
             overrides: dict[str, Any] | None) -> Opened:
  """A fresh model, or ``run_dir``'s newest good checkpoint and metrics (:class:`RunError`: a
  fresh run's ``run_dir`` holds a run, or nothing resumes)."""
  params, optimizer = fresh_model(config, task.input_size, task.output_size)
  opened = Opened(params, optimizer.init(params), 0, None, [])
  if run_dir is None:
    return opened
  checkpoints = checkpoint.manager(run_dir / "checkpoints", config.keep)
  with contextlib.ExitStack() as on_error:
    on_error.callback(checkpoints.close)
    if resume:
      state = restore_newest(checkpoints, config, params, optimizer, run_dir)
      opened = Opened(state["params"], state["opt_state"], int(state["step"]), checkpoints, [])
    elif (last := checkpoints.latest_step()) is not None:
      raise RunError(existing_run_message(run_dir, config, checkpoints, last))
    on_error.pop_all()
  records = read_metrics(run_dir / "metrics.jsonl", opened.start) if resume else []
  if overrides:
    records.append({"step": opened.start, "resumed_with": overrides})
  return opened._replace(checkpoints=checkpoints, records=records)


SOLVED, BEATS = 0.1, 0.9
"""A run *solves* its task when its test error is at most ``SOLVED`` times the trivial
baseline's (the IRNN paper's criterion for the adding problem, Le et al., 2015) and *beats* the
baseline when it is at most ``BEATS`` times it; the error is ``1 - accuracy`` for accuracy."""


def verdict(metric: str, score: float, baseline: float) -> str:
  """``score`` against ``baseline`` by :data:`SOLVED` and :data:`BEATS`, e.g. ``"error 9.5 % of
  the baseline's: solved"``."""
  error, base = (1 - score, 1 - baseline) if higher_is_better(metric) else (score, baseline)
  ratio = error / base if base > 0 else 0.0 if error <= 0 else math.inf
  word = ("solved" if ratio <= SOLVED else "beats the baseline" if ratio <= BEATS
          else f"does not beat the baseline by {1 - BEATS:.0%}")
  return f"error {ratio:.1%} of the baseline's: {word}"


def finish(config: Config, task: Task, score: float, records: list[dict[str, Any]],
           run_dir: Path | None, steps_run: int, seconds: float) -> dict[str, Any]:
  """Prints ``score`` against the baseline, writes ``summary.json`` and ``loss.png`` (process 0)."""
  summary = {"task": config.task, "metric": task.metric, "test": score, "baseline": task.baseline,
             "baseline_name": task.baseline_name, "steps": config.steps, "seconds": seconds}
  if not is_primary():
    return summary
  if run_dir is not None:                 # before printing: a closed stdout loses nothing
    try:
      plot_run(records, task, run_dir / "loss.png")
      (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    except OSError as error:
      raise RunError(f"could not write the summary and plot into {run_dir}: "
                     f"{checkpoint.reason(error)}; the checkpoints are complete, so "
                     f"'jaxrnn resume {run_dir}' writes them later") from None
  print(f"\n{config.task}: {steps_run} steps in {seconds:.1f} s")
  print(f"  {'':32} {'test ' + task.metric:>14}")
  print(f"  {'model':32} {score:>14.4f}")
  print(f"  {'baseline (' + task.baseline_name + ')':32} {task.baseline:>14.4f}")
  print(f"  {'model - baseline':32} {score - task.baseline:>+14.4f}  "
        f"({verdict(task.metric, score, task.baseline)})")
  if run_dir is not None:
    print(f"wrote {run_dir}/metrics.jsonl, loss.png, summary.json, checkpoints/")
  return summary


def train_run(config: Config, run_dir: Path | None, resume: bool = False, progress: bool = True,
              task: Task | None = None, overrides: dict[str, Any] | None = None,
              devices: int | None = None) -> dict[str, Any]:
  """Trains ``config`` under ``run_dir``'s lock (from its newest good checkpoint when ``resume``;
  without ``run_dir`` nothing is written) and returns the summary. ``task`` defaults to
  ``load_task(config)``; ``overrides`` (resume) are recorded in metrics.jsonl; ``devices``
  (:func:`device_counts`) is not part of the config, so a run may resume on another count."""
  task = load_task(config) if task is None else task
  counts = device_counts(devices, config, int(task.test.xs.shape[1]))
  if resume and config.data_fingerprint != task.fingerprint:
    raise RunError(f"the data of {config.task} changed since this run started (fingerprint "
                   f"{config.data_fingerprint or 'none'}, now {task.fingerprint or 'none'}); "
                   "resume on the same data or start a new run")
  config = config.replace(vocab=task.vocab, data_fingerprint=task.fingerprint)
  if run_dir is None:
    return train_loop(config, task, None, open_run(config, task, None, False, None), counts,
                      progress)
  require_extras("orbax.checkpoint", "matplotlib")
  with locked(run_dir) if is_primary() else contextlib.nullcontext():
    opened = open_run(config, task, run_dir, resume, overrides)
    return train_loop(config, task, run_dir, opened, counts, progress)


def train_loop(config: Config, task: Task, run_dir: Path | None, opened: Opened,
               counts: tuple[int, int], progress: bool) -> dict[str, Any]:
  """Runs the steps left to ``config.steps``, recording and saving, then :func:`finish`."""
  model, loss = ModelSpec(config.activation, dropout=config.dropout), LossSpec(task.loss, "mean")
  compute = ComputeSpec(gradient=config.gradient)
  train_mesh, eval_mesh = (None if n == 1 else as_mesh(n) for n in counts)
  eval_step = make_eval_step(model=model, loss=loss, compute=compute, mesh=eval_mesh)
  score = lambda params: task.score({k: float(v) for k, v in
                                     eval_step(local_copy(params), task.test).items()})
  checkpoints, records, start = opened.checkpoints, opened.records, opened.start
  metrics_path = None if run_dir is None or not is_primary() else run_dir / "metrics.jsonl"
  if start >= config.steps:
    checkpoints.close()
    if (run_dir / "summary.json").exists() and (run_dir / "loss.png").exists():
      raise RunError(f"{run_dir} is complete at step {start}; pass --steps to train longer")
    if is_primary():
      print(f"{run_dir} is complete at step {start}; writing its missing summary and plot")
    return finish(config, task, score(opened.params), records, run_dir, 0, 0.0)
  saved = [start if run_dir is not None and start else None]
  where_saved = lambda: ("no checkpoint was written" if saved[0] is None else
                         f"the last good checkpoint, after {saved[0]} steps, is in {run_dir}")

  def record(step: int, params, opt_state, values: dict[str, float]) -> None:
    done = step + 1
    records.append({"step": done, **values})
    if done % config.eval_every == 0 or done == config.steps:
      records[-1]["test"] = score(params)
    if log is not None:
      log.write(json.dumps(records[-1]) + "\n")
    if checkpoints is not None and (done % config.save_every == 0 or done == config.steps):
      if log is not None:
        log.flush()
      try:
        checkpoint.save(checkpoints, done, checkpoint_state(params, opt_state, config.seed, done),
                        config.asdict())
      except ValueError as error:
        raise TrainingStopped(f"training stopped: {error}; {where_saved()}") from None
      except checkpoint.CheckpointError as error:
        raise RunError(f"{error}; {where_saved()}") from None
      saved[0] = done

  if is_primary():
    job = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    print(f"{config.task}: {config.steps - start} steps from step {start}, batch "
          f"{config.batch_size}, {config.num_layers} layer(s)"
          f"{' bidirectional' if config.bidirectional else ''} of H={config.hidden_size}, "
          f"{config.activation}/{config.init}, {config.optimizer} lr={config.learning_rate}, "
          f"{counts[0]} device(s){job}" + (f", run dir {run_dir}" if run_dir else ""), flush=True)
  _, optimizer = fresh_model(config, task.input_size, task.output_size)
  step = make_train_step(optimizer, model=model, loss=loss, compute=compute, mesh=train_mesh)
  batches = task.batches if train_mesh is None else placed_batches(task.batches, train_mesh)
  log = None
  began = time.perf_counter()
  try:
    if metrics_path is not None:
      metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
      log = metrics_path.open("a")
    result = fit(opened.params, opened.opt_state, step, batches, range(start, config.steps),
                 key=run_keys(config)[2] if config.dropout else None,
                 progress=progress and is_primary(), callback=record)
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
  return finish(config, task, score(result.params), records, run_dir, config.steps - start,
                time.perf_counter() - began)
