"""The ``jaxrnn`` command: thin shell layers over the functional API.

* ``jaxrnn train TASK [options]``: trains, evaluates on held-out data, prints
  the metric against the task's trivial baseline, and writes ``metrics.jsonl``,
  ``loss.png``, ``summary.json`` and checkpoints into a run directory.
* ``jaxrnn resume RUN_DIR``: continues a run from its last checkpoint,
  bit-identically to an uninterrupted run.
* ``jaxrnn sample RUN_DIR``: generates text from a ``text`` run.
* ``jaxrnn gradients``: plots ``||dh_T/dh_k||`` against its bound.
* ``jaxrnn demo`` (also ``python -m jaxrnn``): the adding problem in under a minute.

Bad input ends with a one-line ``jaxrnn: error: ...`` and exit status 2;
a non-finite loss with exit status 1; Ctrl-C with 130. matplotlib, orbax,
scikit-learn and statsmodels (the ``tasks`` extra) are imported only by the
commands that need them.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cell import ACTIVATIONS, rnn_cell
from jaxrnn.diagnostics import gradient_flow
from jaxrnn.init import SCHEMES, init_params
from jaxrnn.tasks import TASKS, Config, Task, build_task, higher_is_better, resolve_config
from jaxrnn.train import GRADIENTS, OPTIMIZERS, LossSpec, fit, make_eval_step, make_optimizer

DEMO = dict(steps=1500, hidden_size=64, seq_len=50, eval_every=500)
TRAIN_OPTIONS = ("steps", "batch_size", "hidden_size", "optimizer", "learning_rate", "clip_norm",
                 "activation", "init", "gradient", "seed", "seq_len", "delay", "read",
                 "text_file", "eval_every", "checkpoint_every", "keep", "dtype")


class CLIError(Exception):
  """A bad input: printed as one line, exit status 2."""


def optional_module(name: str) -> Any:
  """Imports ``name``, or fails with a one-line hint to install the ``tasks`` extra."""
  try:
    return importlib.import_module(name)
  except ImportError:
    raise CLIError(f"this command needs {name.split('.')[0]}: "
                   "pip install 'jaxrnn[tasks]'") from None


class TrainingStopped(Exception):
  """A non-finite loss or gradient: printed as one line, exit status 1."""


def fresh_model(config: Config, input_size: int, output_size: int) -> tuple[Any, Any]:
  """``(params, optimizer)`` at the start of a run of ``config`` (params drawn from its seed)."""
  init_key = jax.random.split(jax.random.key(config.seed))[1]
  params = jax.jit(init_params, static_argnums=(1, 2, 3, 4, 5))(
      init_key, input_size, config.hidden_size, output_size, config.init, jnp.dtype(config.dtype))
  return params, make_optimizer(config.optimizer, config.learning_rate, config.clip_norm or None)


def checkpoint_state(params: Any, opt_state: Any, seed: int, step: int) -> dict[str, Any]:
  """What a checkpoint holds besides the config: params, optimizer state, RNG key, step."""
  return {"params": params, "opt_state": opt_state,
          "key": jax.random.key_data(jax.random.key(seed)), "step": jnp.asarray(step, jnp.int32)}


def restore_state(checkpoints: Any, step: int, config: Config, params: Any, optimizer: Any,
                  run_dir: Path) -> dict[str, Any]:
  """The state of checkpoint ``step``, checked against the shapes ``config`` implies."""
  checkpoint = optional_module("jaxrnn.checkpoint")
  like = checkpoint_state(params, optimizer.init(params), config.seed, 0)
  try:
    return checkpoint.restore(checkpoints, step, like)
  except ValueError as error:
    raise CLIError(f"checkpoint {step} in {run_dir} does not fit its config: "
                   f"{str(error).splitlines()[0]}") from None


def load_task(config: Config) -> Task:
  """:func:`build_task` with the data key of ``config.seed``; bad data is a :class:`CLIError`."""
  if config.dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  try:
    return build_task(config, jax.random.split(jax.random.key(config.seed))[0])
  except ImportError as error:
    raise CLIError(f"task {config.task} needs {error.name}: pip install 'jaxrnn[tasks]'") from None
  except ValueError as error:
    raise CLIError(str(error)) from None


def check_config(config: Config) -> None:
  """Raises :class:`CLIError` for option values no run can use."""
  choices = {"optimizer": OPTIMIZERS, "activation": ACTIVATIONS, "init": SCHEMES,
             "gradient": GRADIENTS, "read": ("rows", "pixels"), "dtype": ("float32", "float64")}
  for name, allowed in choices.items():
    if getattr(config, name) not in allowed:
      raise CLIError(f"unknown {name} {getattr(config, name)!r}; choose from {', '.join(allowed)}")
  for name in ("steps", "batch_size", "hidden_size", "seq_len", "delay", "eval_every",
               "checkpoint_every", "keep"):
    if getattr(config, name) < 1:
      raise CLIError(f"--{name.replace('_', '-')} must be at least 1")
  if not config.learning_rate > 0 or config.clip_norm < 0:
    raise CLIError("--learning-rate must be positive and --clip-norm non-negative")


def read_metrics(path: Path, up_to: int) -> list[dict[str, Any]]:
  """The records of ``metrics.jsonl`` with ``step <= up_to``; none when there is no file."""
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in records if r["step"] <= up_to]


def plot_run(records: list[dict[str, Any]], task: Task, path: Path) -> None:
  """Saves the training loss and the test metric (against the baseline) per step as a PNG."""
  fig = optional_module("matplotlib.figure").Figure(figsize=(10, 3.8))
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
  change = (score - task.baseline) / task.baseline
  print(f"\n{config.task}: {steps} steps in {seconds:.1f} s")
  print(f"  {'':32} {'test ' + task.metric:>14}")
  print(f"  {'model':32} {score:>14.4f}")
  print(f"  {'baseline (' + task.baseline_name + ')':32} {task.baseline:>14.4f}")
  print(f"  {'model vs baseline':32} {change:>+14.1%}  "
        f"({'beats' if better else 'does not beat'} the baseline)")


def run(config: Config, run_dir: Path | None, resume: bool = False,
        progress: bool = True) -> dict[str, Any]:
  """Trains ``config`` (from its last checkpoint in ``run_dir`` when ``resume``); returns the summary.

  Without a ``run_dir`` nothing is written (the demo). Otherwise every step's
  loss goes to ``metrics.jsonl``, the test metric every ``eval_every`` steps,
  a checkpoint every ``checkpoint_every`` steps and at the end, then
  ``summary.json`` and ``loss.png``.
  """
  check_config(config)
  task = load_task(config)
  config = config._replace(vocab=task.vocab)
  params, optimizer = fresh_model(config, task.input_size, task.output_size)
  spec = LossSpec(task.loss, config.activation, "identity", "mean")
  opt_state, start = optimizer.init(params), 0
  checkpoints = None
  if run_dir is not None:
    checkpoint = optional_module("jaxrnn.checkpoint")
    optional_module("matplotlib")
    checkpoints = checkpoint.manager(run_dir / "checkpoints", config.keep)
    last = checkpoint.latest_step(checkpoints)
    if resume:
      state = restore_state(checkpoints, last, config, params, optimizer, run_dir)
      params, opt_state, start = state["params"], state["opt_state"], int(state["step"])
      if start >= config.steps:
        checkpoints.close()
        raise CLIError(f"{run_dir} is complete at step {start}; pass --steps to train longer")
    elif last is not None:
      raise CLIError(existing_run_message(run_dir, config, checkpoint.saved_config(checkpoints, last)))
  eval_step = make_eval_step(spec)

  def test_score(params) -> float:
    return task.score({k: float(v) for k, v in eval_step(params, task.test).items()})

  metrics_path = None if run_dir is None else run_dir / "metrics.jsonl"
  records = [] if metrics_path is None else read_metrics(metrics_path, start)
  if metrics_path is not None:
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
  log = None if metrics_path is None else metrics_path.open("a")
  last_saved = [start if resume else None]

  def save(step: int, params, opt_state) -> None:
    if checkpoints is not None:
      log.flush()
      checkpoint.save(checkpoints, step, checkpoint_state(params, opt_state, config.seed, step),
                      config._asdict())
      last_saved[0] = step

  def callback(step: int, params, opt_state, values: dict[str, float]) -> None:
    done = step + 1
    record = {"step": done, **values}
    if done % config.eval_every == 0 or done == config.steps:
      record["test"] = test_score(params)
    records.append(record)
    if log is not None:
      log.write(json.dumps(record) + "\n")
    if done % config.checkpoint_every == 0 or done == config.steps:
      save(done, params, opt_state)

  print(f"{config.task}: {config.steps - start} steps from step {start}, batch {config.batch_size}, "
        f"H={config.hidden_size}, {config.activation}/{config.init}, {config.optimizer} "
        f"lr={config.learning_rate}" + (f", run dir {run_dir}" if run_dir else ""), flush=True)
  began = time.perf_counter()
  try:
    result = fit(params, optimizer, task.batches, config.steps - start, spec, config.gradient,
                 opt_state, start, progress, callback, config.batch_size)
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


def existing_run_message(run_dir: Path, config: Config, saved: dict[str, Any]) -> str:
  """Why ``train`` refuses ``run_dir``: it already holds this run, or one of another config."""
  diff = [f"{k} {saved.get(k)!r} there, {v!r} here" for k, v in config._asdict().items()
          if saved.get(k) != v]
  if not diff:
    return f"{run_dir} already holds this run; continue it with: jaxrnn resume {run_dir}"
  return (f"{run_dir} holds a checkpoint from a different config ({'; '.join(diff)}); "
          "use another --run-dir")


def run_config(run_dir: Path) -> tuple[Config, Any]:
  """The config of the last checkpoint in ``run_dir`` (and that step)."""
  if not (run_dir / "checkpoints").is_dir():
    raise CLIError(f"{run_dir} is not a run directory (no checkpoints/ in it)")
  checkpoint = optional_module("jaxrnn.checkpoint")
  checkpoints = checkpoint.manager(run_dir / "checkpoints")
  step = checkpoint.latest_step(checkpoints)
  if step is None:
    raise CLIError(f"{run_dir} holds no complete checkpoint")
  saved = checkpoint.saved_config(checkpoints, step)
  checkpoints.close()
  if set(saved) != set(Config._fields):
    raise CLIError(f"the checkpoint in {run_dir} was written by another version of jaxrnn")
  return Config(**saved), step


def cmd_train(args: argparse.Namespace) -> None:
  options = {k: getattr(args, k) for k in TRAIN_OPTIONS}
  try:
    config = resolve_config(args.task, **options)
  except ValueError as error:
    raise CLIError(str(error)) from None
  if args.epochs is not None:
    task = load_task(config)
    if task.train_size is None:
      raise CLIError(f"{args.task} draws fresh data every step; use --steps, not --epochs")
    config = config._replace(steps=math.ceil(args.epochs * task.train_size / config.batch_size))
  run_dir = Path(args.run_dir or f"runs/{args.task}-{time.strftime('%Y%m%d-%H%M%S')}")
  run(config, run_dir, progress=not args.no_progress)


def cmd_resume(args: argparse.Namespace) -> None:
  config, _ = run_config(Path(args.run_dir))
  if args.steps is not None:
    config = config._replace(steps=args.steps)
  run(config, Path(args.run_dir), resume=True, progress=not args.no_progress)


def cmd_demo(args: argparse.Namespace) -> None:
  print("jaxrnn demo: an Elman RNN learns the adding problem (T=50): add the two marked\n"
        "values of a 50-step sequence, which needs memory. Predicting 1.0 scores MSE ~0.167.")
  run(resolve_config("adding", **DEMO, seed=args.seed), None, progress=not args.no_progress)


def cmd_sample(args: argparse.Namespace) -> None:
  run_dir = Path(args.run_dir)
  config, step = run_config(run_dir)
  if config.task != "text":
    raise CLIError(f"{run_dir} is a {config.task!r} run; sample needs a text run")
  if not args.temperature > 0:
    raise CLIError("--temperature must be positive")
  missing = sorted(set(args.prompt) - set(config.vocab))
  if missing or not args.prompt:
    raise CLIError(f"the prompt must be non-empty, from the run's vocabulary (not {''.join(missing)!r})")
  params, optimizer = fresh_model(config, len(config.vocab), len(config.vocab))
  checkpoints = optional_module("jaxrnn.checkpoint").manager(run_dir / "checkpoints")
  params = restore_state(checkpoints, step, config, params, optimizer, run_dir)["params"]
  checkpoints.close()
  print(generate(params, config, args.prompt, args.length, args.temperature, args.seed))


def generate(params: Any, config: Config, prompt: str, length: int, temperature: float,
             seed: int) -> str:
  """``prompt`` followed by ``length`` characters sampled from the model, one jit-compiled cell step each."""
  cell = jax.jit(functools.partial(rnn_cell, activation=config.activation))
  pick = jax.jit(lambda key, logits: jax.random.categorical(key, logits / temperature))
  codes = {c: i for i, c in enumerate(config.vocab)}
  one_hot = lambda code: jax.nn.one_hot(code, len(config.vocab), dtype=params.W_hh.dtype)
  h = jnp.zeros(params.W_hh.shape[0], params.W_hh.dtype)
  for char in prompt:
    h, logits = cell(params, h, one_hot(codes[char]))
  key, text = jax.random.key(seed), [prompt]
  for i in range(length):
    code = pick(jax.random.fold_in(key, i), logits)
    text.append(config.vocab[int(code)])
    h, logits = cell(params, h, one_hot(code))
  return "".join(text)


def cmd_gradients(args: argparse.Namespace) -> None:
  matplotlib = optional_module("matplotlib")
  optional_module("matplotlib.figure")
  if args.steps < 1 or args.hidden_size < 1 or not all(r > 0 for r in args.radii):
    raise CLIError("--steps, --hidden-size and every radius must be positive")
  k_params, k_xs = jax.random.split(jax.random.key(args.seed))
  xs = jax.random.normal(k_xs, (args.steps, 4), jnp.float32)              # [T, I]
  base = init_params(k_params, 4, args.hidden_size, 1, "orthogonal", jnp.float32)
  fig = matplotlib.figure.Figure(figsize=(11, 4.2))
  axes = fig.subplots(1, len(ACTIVATIONS), sharey=True)
  gap = np.arange(args.steps + 1)                                         # T - k
  flow_of = jax.jit(gradient_flow, static_argnames="activation")
  print(f"{'activation':>10} {'radius':>7} {'||act_prime||':>13} "
        f"{'||dh_T/dh_0||':>14} {'bound':>10}")
  for ax, activation in zip(axes, ACTIVATIONS):
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(args.radii)))
    for color, radius in zip(colors, args.radii):
      flow = flow_of(base._replace(W_hh=radius * base.W_hh), xs, activation=activation)
      norms, bound = np.asarray(flow.norms[-1, ::-1]), np.asarray(flow.bound[-1, ::-1])
      ax.plot(gap, norms, color=color, label=f"radius {radius:g}")
      ax.plot(gap, bound, color=color, ls="--", lw=1)
      print(f"{activation:>10} {radius:>7g} {float(flow.act_slope):>13.3f} "
            f"{norms[-1]:>14.3e} {bound[-1]:>10.3e}")
    ax.set(yscale="log", xlabel="T - k", title=f"{activation}: solid ||dh_T/dh_k||, "
           "dashed (||W_hh|| ||act'||)^(T-k)")
  axes[0].set_ylabel("norm")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(args.out, dpi=100)
  print(f"wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
  """The ``jaxrnn`` argument parser, one sub-parser per command."""
  parser = argparse.ArgumentParser(prog="jaxrnn", description="Train and inspect Elman RNNs.")
  commands = parser.add_subparsers(dest="command", required=True)
  train = commands.add_parser("train", help="train a task into a run directory")
  train.add_argument("task", metavar="TASK", help=f"one of: {', '.join(TASKS)}")
  train.add_argument("--steps", type=int, help="training steps (task default)")
  train.add_argument("--epochs", type=float, help="instead of --steps: passes over the training "
                     "set (digits, sunspots, text)")
  train.add_argument("--batch-size", type=int)
  train.add_argument("--hidden-size", type=int)
  train.add_argument("--optimizer", help=f"one of: {', '.join(OPTIMIZERS)}")
  train.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float)
  train.add_argument("--clip-norm", type=float, help="global-norm clipping; 0 disables")
  train.add_argument("--activation", help="tanh or relu")
  train.add_argument("--init", help=f"one of: {', '.join(SCHEMES)}")
  train.add_argument("--gradient", help="fused (hand BPTT, default), autodiff or bptt")
  train.add_argument("--seed", type=int)
  train.add_argument("--seq-len", type=int, help="T (adding, sine), symbols to copy (copy), "
                     "training window (sunspots, text)")
  train.add_argument("--delay", type=int, help="copy: steps between reading and writing")
  train.add_argument("--read", help="digits: rows (8 steps x 8) or pixels (64 steps x 1)")
  train.add_argument("--text-file", help="text: the corpus (default: Python's pydoc topics)")
  train.add_argument("--eval-every", type=int, help="steps between test evaluations")
  train.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
  train.add_argument("--keep", type=int, help="checkpoints to keep")
  train.add_argument("--dtype", help="float32 (default) or float64")
  train.add_argument("--run-dir", help="default: runs/TASK-DATE-TIME")
  train.add_argument("--no-progress", action="store_true", help="no progress bar")
  train.set_defaults(handler=cmd_train)
  resume = commands.add_parser("resume", help="continue a run from its last checkpoint")
  resume.add_argument("run_dir", metavar="RUN_DIR")
  resume.add_argument("--steps", type=int, help="new total number of steps")
  resume.add_argument("--no-progress", action="store_true")
  resume.set_defaults(handler=cmd_resume)
  sample = commands.add_parser("sample", help="generate text from a text run")
  sample.add_argument("run_dir", metavar="RUN_DIR")
  sample.add_argument("--prompt", default="The ")
  sample.add_argument("--length", type=int, default=400)
  sample.add_argument("--temperature", type=float, default=0.8)
  sample.add_argument("--seed", type=int, default=0)
  sample.set_defaults(handler=cmd_sample)
  gradients = commands.add_parser("gradients", help="plot vanishing/exploding gradients")
  gradients.add_argument("--radii", type=float, nargs="+", default=[0.5, 0.9, 1.0, 1.1, 1.5])
  gradients.add_argument("--steps", type=int, default=50, help="sequence length T")
  gradients.add_argument("--hidden-size", type=int, default=64)
  gradients.add_argument("--seed", type=int, default=0)
  gradients.add_argument("--out", default="gradients.png")
  gradients.set_defaults(handler=cmd_gradients)
  demo = commands.add_parser("demo", help="the adding problem in under a minute")
  demo.add_argument("--seed", type=int, default=0)
  demo.add_argument("--no-progress", action="store_true")
  demo.set_defaults(handler=cmd_demo)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the ``jaxrnn`` command line; returns the exit status."""
  args = build_parser().parse_args(argv)
  try:
    args.handler(args)
  except CLIError as error:
    print(f"jaxrnn: error: {error}", file=sys.stderr)
    return 2
  except TrainingStopped as error:
    print(f"jaxrnn: {error}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("\njaxrnn: interrupted; continue from the last checkpoint with: jaxrnn resume RUN_DIR",
          file=sys.stderr)
    return 130
  return 0
