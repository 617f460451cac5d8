"""A training run of the command line: fresh model, checkpoints, metrics, summary.

A run is a :class:`jaxrnn.tasks.Config` trained into a run directory:
``metrics.jsonl`` (one JSON record per step), ``checkpoints/`` (orbax, the
config saved beside each), and at the end ``summary.json`` and ``loss.png``.
Everything a run computes is a pure function of its config: the data key,
the parameter key and the dropout key all come from ``config.seed``, so a
resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn import checkpoint
from jaxrnn.init import init_params
from jaxrnn.params import RNNParams
from jaxrnn.spec import ComputeSpec, LossSpec, ModelSpec
from jaxrnn.tasks import Config, Task, build_task, higher_is_better
from jaxrnn.train import fit, make_eval_step, make_optimizer


class RunError(Exception):
  """A run that cannot start or go on for a reason the user can fix: one line, exit status 2."""


class TrainingStopped(Exception):
  """A non-finite loss, gradient or update: one line, exit status 1."""


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
  """``(params, optimizer)`` at the start of a run of ``config`` (params drawn from its seed)."""
  params = init_params(run_keys(config)[1], input_size, config.hidden_size, output_size,
                       config.init, jnp.dtype(config.dtype), num_layers=config.num_layers,
                       bidirectional=config.bidirectional)
  return params, make_optimizer(config.optimizer, config.learning_rate, config.clip_norm or None)


def checkpoint_state(params: Any, opt_state: Any, seed: int, step: int) -> dict[str, Any]:
  """What a checkpoint holds besides the config: params, optimizer state, RNG key, step."""
  return {"params": params, "opt_state": opt_state,
          "key": jax.random.key_data(jax.random.key(seed)), "step": jnp.asarray(step, jnp.int32)}


def restore_state(checkpoints: Any, step: int, config: Config, params: Any, optimizer: Any,
                  run_dir: Path) -> dict[str, Any]:
  """The state of checkpoint ``step``, checked against the shapes ``config`` implies."""
  like = checkpoint_state(params, optimizer.init(params), config.seed, 0)
  try:
    return checkpoint.restore(checkpoints, step, like)
  except ValueError as error:
    raise RunError(f"checkpoint {step} in {run_dir} does not fit its config: "
                   f"{str(error).splitlines()[0]}") from None


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
  """The config of the last checkpoint in ``run_dir`` and that step.

  Configs saved before a field existed get its default (the behaviour they had).
  """
  if not (run_dir / "checkpoints").is_dir():
    raise RunError(f"{run_dir} is not a run directory (no checkpoints/ in it)")
  require_extras("orbax.checkpoint")
  checkpoints = checkpoint.manager(run_dir / "checkpoints")
  step = checkpoint.latest_step(checkpoints)
  if step is None:
    checkpoints.close()
    raise RunError(f"{run_dir} holds no complete checkpoint")
  saved = checkpoint.saved_config(checkpoints, step)
  checkpoints.close()
  if not set(saved) <= set(Config._fields):
    raise RunError(f"the checkpoint in {run_dir} was written by another version of jaxrnn")
  return Config(**saved), step


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
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return [r for r in records if isinstance(r, dict) and r.get("step", up_to + 1) <= up_to]


def plot_run(records: list[dict[str, Any]], task: Task, path: Path) -> None:
  """Saves the training loss and the test metric (against the baseline) per step as a PNG."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(10, 3.8))
  ax_loss, ax_test = fig.subplots(1, 2)
  test = [r for r in records if "test" in r]
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


def train_run(config: Config, run_dir: Path | None, resume: bool = False,
              progress: bool = True, task: Task | None = None) -> dict[str, Any]:
  """Trains ``config`` (from its last checkpoint in ``run_dir`` when ``resume``); returns the summary.

  Without a ``run_dir`` nothing is written (the demo). Otherwise every step's
  metrics go to ``metrics.jsonl``, the test metric every ``eval_every``
  steps, a checkpoint every ``checkpoint_every`` steps and at the end, then
  ``summary.json`` and ``loss.png``. A step whose update is non-finite is
  never saved (:func:`jaxrnn.fit` stops before handing it on). ``task`` is
  ``load_task(config)`` when ``None``.
  """
  task = load_task(config) if task is None else task
  config = config._replace(vocab=task.vocab)
  params, optimizer = fresh_model(config, task.input_size, task.output_size)
  model, loss, compute = specs(config, task)
  opt_state, start = optimizer.init(params), 0
  checkpoints = None
  if run_dir is not None:
    require_extras("orbax.checkpoint", "matplotlib")
    checkpoints = checkpoint.manager(run_dir / "checkpoints", config.keep)
    last = checkpoint.latest_step(checkpoints)
    if resume:
      state = restore_state(checkpoints, last, config, params, optimizer, run_dir)
      params, opt_state, start = state["params"], state["opt_state"], int(state["step"])
      if start >= config.steps:
        checkpoints.close()
        raise RunError(f"{run_dir} is complete at step {start}; pass --steps to train longer")
    elif last is not None:
      saved = checkpoint.saved_config(checkpoints, last)
      checkpoints.close()
      raise RunError(existing_run_message(run_dir, config, saved))
  eval_step = make_eval_step(model=model, loss=loss)

  def test_score(params) -> float:
    return task.score({k: float(v) for k, v in eval_step(params, task.test).items()})

  metrics_path = None if run_dir is None else run_dir / "metrics.jsonl"
  records = [] if metrics_path is None else read_metrics(metrics_path, start)
  if metrics_path is not None:
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
  log = None if metrics_path is None else metrics_path.open("a")
  last_saved = [start if resume else None]

  def callback(step: int, params, opt_state, values: dict[str, float]) -> None:
    done = step + 1
    record = {"step": done, **values}
    if done % config.eval_every == 0 or done == config.steps:
      record["test"] = test_score(params)
    records.append(record)
    if log is not None:
      log.write(json.dumps(record) + "\n")
    if checkpoints is not None and (done % config.checkpoint_every == 0 or done == config.steps):
      log.flush()
      checkpoint.save(checkpoints, done, checkpoint_state(params, opt_state, config.seed, done),
                      config._asdict())
      last_saved[0] = done

  print(f"{config.task}: {config.steps - start} steps from step {start}, batch {config.batch_size}, "
        f"{config.num_layers} layer(s){' bidirectional' if config.bidirectional else ''} of "
        f"H={config.hidden_size}, {config.activation}/{config.init}, {config.optimizer} "
        f"lr={config.learning_rate}" + (f", run dir {run_dir}" if run_dir else ""), flush=True)
  began = time.perf_counter()
  try:
    result = fit(params, optimizer, task.batches, config.steps - start, model=model, loss=loss,
                 compute=compute, key=run_keys(config)[2] if config.dropout else None,
                 opt_state=opt_state, start_step=start, progress=progress, callback=callback,
                 sequences_per_step=config.batch_size)
  except FloatingPointError as error:
    where = ("no checkpoint was written" if last_saved[0] is None
             else f"the last good checkpoint, after {last_saved[0]} steps, is in {run_dir}")
    raise TrainingStopped(f"training stopped: {error}; {where}") from None
  finally:
    if log is not None:
      log.close()
    if checkpoints is not None:
      checkpoints.close()
  seconds = time.perf_counter() - began
  score = test_score(result.params)
  print_table(config, task, score, config.steps - start, seconds)
  summary = {"task": config.task, "metric": task.metric, "test": score, "baseline": task.baseline,
             "baseline_name": task.baseline_name, "steps": config.steps, "seconds": seconds}
  if run_dir is not None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_run(records, task, run_dir / "loss.png")
    print(f"wrote {run_dir}/metrics.jsonl, loss.png, summary.json, checkpoints/")
  return summary
