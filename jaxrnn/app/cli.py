"""The ``jaxrnn`` command: ``train``, ``resume``, ``sample``, ``gradients`` and ``demo``; bad input
ends with one line ``jaxrnn: error: ...`` and exit status 2, a non-finite loss with 1, Ctrl-C
with 130."""

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from jaxrnn.app import checkpoint, job
from jaxrnn.app.config import (CHOICES, FIELDS, MAX_STEPS, TASK_DEFAULTS, Config, check_real,
                               flag, resolve_config)
from jaxrnn.app.plots import plot_gradients
from jaxrnn.app.rundir import (JobFailed, RunError, TrainingStopped, is_primary, locked, one_line,
                               require_extras, restore_newest, run_config)
from jaxrnn.app.training import fresh_model, load_task, train_run
from jaxrnn.checks import device_memory
from jaxrnn.diagnostics import gradient_flow, lyapunov_exponents
from jaxrnn.inference import generate, min_temperature
from jaxrnn.init import init_params
from jaxrnn.spec import ACTIVATION_NAMES, InitSpec, ModelSpec

DEMO = dict(steps=1500, hidden_size=64, seq_len=50, eval_every=500)
TASK_OPTIONS = {"seq_len": ("adding", "copy", "sine", "sunspots", "text"), "delay": ("copy",),
                "read": ("digits",), "text_file": ("text",)}
TRAIN_OPTIONS = tuple(f for f in FIELDS if f not in ("task", "vocab", "data_fingerprint"))
RESUME_OVERRIDES = {"steps": "new total number of steps (default: the run's)",
                    "learning_rate": "a new learning rate from here on, recorded in "
                                     "metrics.jsonl (default: the run's)",
                    "clip_norm": "a new global-norm clipping from here on; 0 disables "
                                 "(default: the run's)"}
HELP = {
    "steps": "training steps", "batch_size": "sequences per training step",
    "hidden_size": "H, the units of each layer's state", "num_layers": "stacked layers",
    "bidirectional": "two directions per layer (adding, copy, digits)",
    "dropout": "dropout between layers (needs --layers >= 2)",
    "optimizer": "the optax optimizer", "learning_rate": "the optimizer's learning rate",
    "warmup": "steps over which the learning rate rises linearly to --lr (0: none)",
    "clip_norm": "global-norm gradient clipping; 0 disables",
    "activation": "act in h_t = act(W_xh x_t + W_hh h_t-1 + b_h)",
    "init": "how W_hh starts (identity: the IRNN)", "dtype": "of the parameters and the data",
    "gradient": "fused (hand BPTT), autodiff (jax.grad through lax.scan) or bptt (the oracle)",
    "seed": "of the parameters, the data and dropout",
    "seq_len": "T (adding, sine), symbols to copy (copy), training window (sunspots, text)",
    "delay": "copy: steps between reading and writing", "keep": "checkpoints to keep",
    "read": "digits: rows (8 steps x 8) or pixels (64 steps x 1)",
    "text_file": "text: the corpus (default: Python's pydoc topics)",
    "eval_every": "steps between test evaluations", "save_every": "steps between checkpoints"}
"""One line of help per option of ``jaxrnn train``; :func:`default_help` adds its default."""
DEVICES_HELP = ("split each batch over N devices (default: every CPU core when the model is "
                "large enough for the split to pay, else 1); fewer when N does not divide the "
                "batch size")


def configured(task: str, **options) -> Config:
  """:func:`resolve_config`, its ``ValueError`` as a :class:`RunError`."""
  try:
    return resolve_config(task, **options)
  except ValueError as error:
    raise RunError(str(error)) from None


def real_option(option: str, value: float, rule: str, ok: Callable[[float], bool]) -> None:
  """:func:`check_real`, its ``ValueError`` as a :class:`RunError`."""
  try:
    check_real(option, value, rule, ok)
  except ValueError as error:
    raise RunError(str(error)) from None


def listed(words: Sequence[str]) -> str:
  """``words`` as a phrase: ``"a"``, ``"a and b"``, ``"a, b and c"``."""
  return " and ".join(filter(None, (", ".join(words[:-1]), words[-1])))


def check_seed(seed: int) -> None:
  """Raises :class:`RunError` unless ``seed`` is a valid ``jax.random`` seed."""
  if not 0 <= seed < 2**32:
    raise RunError(f"--seed must be a whole number from 0 to {2**32 - 1}")


def cmd_train(args: argparse.Namespace) -> None:
  options = {k: getattr(args, k) for k in TRAIN_OPTIONS}
  for name, tasks in TASK_OPTIONS.items():
    if options[name] is not None and args.task not in tasks:
      raise RunError(f"{flag(name)} is for the {listed(tasks)} task{'s' * (len(tasks) > 1)}, "
                     f"not {args.task}")
  config = configured(args.task, **options)
  if args.epochs is not None:
    if args.steps is not None:
      raise RunError("give --steps or --epochs, not both")
    if not (math.isfinite(args.epochs) and args.epochs > 0):
      raise RunError("--epochs must be a finite number > 0")
    task = load_task(config)
    if task.train_size is None:
      raise RunError(f"{args.task} draws fresh data every step; use --steps, not --epochs")
    steps = args.epochs * task.train_size / config.batch_size    # inf beyond float's range
    if steps > MAX_STEPS:
      raise RunError(f"--epochs {args.epochs:g} makes more than {MAX_STEPS} steps: at most "
                     f"{MAX_STEPS * config.batch_size / task.train_size:.6g} epochs of "
                     f"{task.train_size} sequences in batches of {config.batch_size}")
    config = config.replace(steps=math.ceil(steps))
  else:
    task = None
  if args.run_dir is None and jax.process_count() > 1:
    raise RunError("a job of several processes needs --run-dir, the same in every process")
  run_dir = Path(args.run_dir or f"runs/{args.task}-{time.strftime('%Y%m%d-%H%M%S')}")
  args.run_dir = str(run_dir)             # for the hint that Ctrl-C prints
  for folder in (run_dir, *run_dir.parents):  # the nearest that exists: a writable directory
    if folder.exists():
      if not folder.is_dir():
        raise RunError(f"--run-dir: {folder} is a file, not a directory")
      if not os.access(folder, os.W_OK):
        raise RunError(f"--run-dir: {folder} is not writable")
      break
  train_run(config, run_dir, progress=not args.no_progress, task=task, devices=args.devices)


def cmd_resume(args: argparse.Namespace) -> None:
  run_dir = Path(args.run_dir)
  # Under the run's lock: a train still running there deletes old checkpoints as it goes.
  reading = (locked(run_dir) if is_primary() and (run_dir / "checkpoints").is_dir()
             else contextlib.nullcontext())
  with reading:
    config, step = run_config(run_dir)
  if args.steps is not None and args.steps <= step:
    raise RunError(f"--steps {args.steps} is not past step {step}, where {run_dir} stands; "
                   "pass a larger --steps to train longer")
  overrides = {name: [getattr(config, name), getattr(args, name)] for name in RESUME_OVERRIDES
               if getattr(args, name) is not None and getattr(args, name) != getattr(config, name)}
  try:
    config = config.replace(**{name: new for name, (_, new) in overrides.items()})
  except ValueError as error:
    raise RunError(str(error)) from None
  train_run(config, run_dir, resume=True, progress=not args.no_progress,
            overrides={k: v for k, v in overrides.items() if k != "steps"}, devices=args.devices)


def cmd_demo(args: argparse.Namespace) -> None:
  config = configured("adding", **DEMO, seed=args.seed)
  task = load_task(config)
  print(f"jaxrnn demo: an Elman RNN learns the adding problem (T={config.seq_len}): add the two "
        f"marked\nvalues of a {config.seq_len}-step sequence, which needs memory. Predicting "
        f"1.0 scores test MSE {task.baseline:.4f}.")
  train_run(config, None, progress=not args.no_progress, task=task, devices=args.devices)


def cmd_sample(args: argparse.Namespace) -> None:
  run_dir = Path(args.run_dir)
  config, _ = run_config(run_dir)
  if config.task != "text":
    raise RunError(f"{run_dir} is a run of the {config.task} task; sample needs a text run")
  if not 0 <= args.length <= 10**7:
    raise RunError("--length must be from 0 to 10000000")
  check_seed(args.seed)
  missing = sorted(set(args.prompt) - set(config.vocab))
  if missing or not args.prompt:
    raise RunError("the prompt must be non-empty, from the run's vocabulary "
                   f"(not {''.join(missing)!r})")
  if config.dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  params, optimizer = fresh_model(config, len(config.vocab), len(config.vocab))
  low = min_temperature(params.W_hy.dtype)
  real_option("--temperature", args.temperature, f"> {low:.6g}", lambda t: t > low)
  checkpoints = checkpoint.manager(run_dir / "checkpoints")
  try:      # as resume does, but leaving a damaged checkpoint where it is: sample only reads
    params = restore_newest(checkpoints, config, params, optimizer, run_dir,
                            set_aside=False)["params"]
  finally:
    checkpoints.close()
  prompt = jnp.asarray([config.vocab.index(c) for c in args.prompt])
  sampled = generate(params, jax.random.key(args.seed), prompt, args.length, args.temperature,
                     model=ModelSpec(config.activation))
  print(args.prompt + "".join(config.vocab[int(i)] for i in np.asarray(sampled)))


GRADIENT_POINTS = 1000
"""``jaxrnn gradients`` takes ``||dh_t/dh_0||`` at about this many steps ``t`` (every
``stride``-th, ``stride = ceil(T / GRADIENT_POINTS)``), plus ``t = 0``."""
GRADIENT_INPUTS = 4
"""``I`` of the random model and sequence of ``jaxrnn gradients``."""
RADII = (1e-12, 5.0)
"""The spectral radii ``jaxrnn gradients`` takes. Beyond them float32 rounds the norms to 0 (a
tiny ``W_hh``; tanh saturated, ``act' = 0``) or overflows to nan; within them only a ReLU path
with every unit off at one step has a norm of 0, and that 0 is exact."""


def gradient_curves(params: jaxrnn.RNNParams, xs: jax.Array, stride: int,
                    model: ModelSpec) -> tuple[jaxrnn.GradientFlow, jax.Array]:
  """``(gradient_flow from step 0 every stride-th step, lambda_1)`` of one model on ``xs``."""
  flow = gradient_flow(params, xs, start=0, stride=stride, model=model)
  return flow, lyapunov_exponents(params, xs, model=model)[0]


def gradients_memory(steps: int, hidden: int) -> int:
  """Bytes :func:`gradient_curves` holds at once in float32, as XLA allocates them (its
  arguments, outputs and scratch; checked against ``memory_analysis()`` in the tests), for
  ``T = steps``, ``H = hidden``: the sequence ``[T, I]``; four ``[T, H]`` arrays (the path's
  states and ``act'`` for ``gradient_flow`` and again for ``lyapunov_exponents``) and the
  ``[T]`` mask of the steps averaged; the parameters, ``[H, H]`` products and SVD work arrays
  (under ``6 H^2``); the ``~GRADIENT_POINTS`` norms. ``O(T H + H^2)``, not ``O(T H^2)``."""
  return (4 * (steps * (GRADIENT_INPUTS + 4 * hidden) + 6 * hidden ** 2 + 64 * hidden
               + 2 * GRADIENT_POINTS) + steps + 16384)


def cmd_gradients(args: argparse.Namespace) -> None:
  require_extras("matplotlib")
  if args.steps < 1 or args.hidden_size < 1:
    raise RunError("--steps and --hidden-size must be positive")
  for radius in args.radii:
    real_option("--radii", radius, f"from {RADII[0]:g} to {RADII[1]:g}",
                lambda r: RADII[0] <= r <= RADII[1])
  check_seed(args.seed)
  needed = gradients_memory(args.steps, args.hidden_size)
  if needed > device_memory() // 2:
    raise RunError(f"--steps {args.steps} and --hidden-size {args.hidden_size} need about "
                   f"{needed / 2**30:.1f} GiB; lower them")
  out = Path(args.out)
  if out.suffix.lower() not in (".png", ".pdf", ".svg"):
    raise RunError("--out must end in .png, .pdf or .svg")
  if out.is_dir():
    raise RunError(f"--out: {out} is a directory")
  if not out.parent.is_dir():
    raise RunError(f"--out: {out.parent} is not a directory")
  k_params, k_xs = jax.random.split(jax.random.key(args.seed))
  xs = jax.random.normal(k_xs, (args.steps, GRADIENT_INPUTS), jnp.float32)  # [T, I]
  stride = -(-args.steps // GRADIENT_POINTS)
  curves_of = jax.jit(gradient_curves, static_argnames=("stride", "model"))
  print(f"{'activation':>10} {'radius':>7} {'||act_prime||':>13} {'lambda_1':>9} "
        f"{'log10 ||dh_T/dh_0||':>20} {'log10 rate':>11} {'log10 bound':>12}")
  curves = {}
  for activation in ACTIVATION_NAMES:
    curves[activation] = []
    for radius in args.radii:
      params = init_params(k_params, GRADIENT_INPUTS, args.hidden_size, 1, dtype=jnp.float32,
                           init=InitSpec("orthogonal", radius))
      flow, rate = curves_of(params, xs, stride=stride, model=ModelSpec(activation))
      steps = np.arange(0, args.steps + 1, stride)                      # t
      log10 = lambda a: np.asarray(a, np.float64) / math.log(10)
      norms, bound, rate_t = log10(flow.log_norms), log10(flow.log_bound), log10(rate * steps)
      curves[activation].append((radius, steps, norms, rate_t, bound))
      print(f"{activation:>10} {radius:>7g} {float(flow.act_slope):>13.3f} {float(rate):>9.4f} "
            f"{norms[-1]:>20.2f} {rate_t[-1]:>11.2f} {bound[-1]:>12.2f}")
  try:
    plot_gradients(curves, out)
  except OSError as error:
    raise RunError(f"could not write {out}: {checkpoint.reason(error)}") from None
  print(f"wrote {out}")


def join_job(args: argparse.Namespace) -> Callable[[], None] | None:
  """Joins the job the job options name (:func:`jaxrnn.app.job.join`) and returns its ``done``;
  ``None`` when none is given; :class:`RunError` when they are incomplete or out of range."""
  options = {"--coordinator": getattr(args, "coordinator", None),
             "--num-processes": getattr(args, "num_processes", None),
             "--process-id": getattr(args, "process_id", None)}
  if all(value is None for value in options.values()):
    return None
  if any(value is None for value in options.values()):
    raise RunError("--coordinator, --num-processes and --process-id go together; missing "
                   + ", ".join(name for name, value in options.items() if value is None))
  host, _, port = args.coordinator.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65535:
    raise RunError(f"--coordinator {args.coordinator!r}: expected HOST:PORT with PORT below "
                   "65535 (process 0 also listens on PORT + 1), e.g. 10.0.0.1:1234")
  if args.num_processes < 1:
    raise RunError("--num-processes must be at least 1")
  if not 0 <= args.process_id < args.num_processes:
    raise RunError(f"--process-id must be in 0..{args.num_processes - 1}, got {args.process_id}")
  if not 0 < args.join_timeout <= 3600:
    raise RunError("--join-timeout must be in (0, 3600] seconds")
  options = {k: v for k, v in vars(args).items()  # what must agree: all but these
             if k not in ("process_id", "join_timeout", "no_progress", "handler")}
  return job.join(args.coordinator, args.num_processes, args.process_id, args.join_timeout, options)


def use_every_core() -> None:
  """Makes every CPU core a JAX device (one chain of the recurrence keeps one core busy),
  unless the user's ``XLA_FLAGS`` set the count or JAX's backend has already started."""
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  try:
    jax.config.update("jax_num_cpu_devices", cores)
  except RuntimeError:  # the backend already started: use what exists
    pass


def default_help(name: str) -> str:
  """``name``'s default as ``--help`` shows it, e.g. ``default 64 (copy 128, text 256)``: the
  most tasks' value, then the tasks of :data:`TASK_DEFAULTS` that set another; ``""`` for an
  option with no value (a flag, a file)."""
  base = Config.__dataclass_fields__[name].default
  if isinstance(base, bool) or base is None:
    return ""
  shown = lambda v: f"{v:g}" if isinstance(v, float) else str(v)
  by_task = {task: defaults.get(name, base) for task, defaults in TASK_DEFAULTS.items()}
  values = list(by_task.values())
  usual = max(values, key=values.count)
  others = ", ".join(f"{task} {shown(v)}" for task, v in by_task.items() if v != usual)
  return f"default {shown(usual)}" + (f" ({others})" if others else "")


def add_option(parser: argparse.ArgumentParser, name: str, help_text: str | None = None) -> None:
  """Adds the option of config field ``name``, typed as its default, with one line of help
  (``help_text`` or :data:`HELP`'s, the choices and :func:`default_help`)."""
  default = Config.__dataclass_fields__[name].default
  names = (flag(name), *{"learning_rate": ("--learning-rate",),
                         "save_every": ("--checkpoint-every",)}.get(name, ()))  # 0.2.0's name
  kind = (dict(action="store_true", default=None) if isinstance(default, bool)
          else dict(type=type(default)) if isinstance(default, (int, float)) else {})
  parts = [help_text or HELP[name]]
  if name in CHOICES:
    parts.append(f"one of {', '.join(CHOICES[name])}")
  if help_text is None and default_help(name):
    parts.append(default_help(name))
  parser.add_argument(*names, dest=name, help="; ".join(parts), **kind)


def add_defaults(parser: argparse.ArgumentParser, **options: tuple[Any, str]) -> None:
  """Adds an option ``--NAME`` per keyword ``NAME=(default, help)``, typed as its default."""
  for name, (default, help_text) in options.items():
    parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                        help=f"{help_text} (default %(default)r)" if isinstance(default, str)
                        else f"{help_text} (default %(default)s)")


def add_run_options(parser: argparse.ArgumentParser, devices_help: str, job: bool) -> None:
  """``--devices`` and ``--no-progress``, and with ``job`` the options of :func:`join_job`."""
  parser.add_argument("--devices", type=int, metavar="N", help=devices_help)
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  if job:
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help="join a job of several processes: process 0's address and a free port")
    parser.add_argument("--num-processes", type=int, metavar="N", help="processes in the job")
    parser.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1")
    parser.add_argument("--join-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for every process of the job (default 30)")


class Parser(argparse.ArgumentParser):
  """An ``ArgumentParser`` (its sub-parsers too) whose error is one line, ``jaxrnn train: error:
  ...`` and exit status 2, without the usage text; ``--help`` still prints it all."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
  """The ``jaxrnn`` argument parser, one sub-parser per command."""
  parser = Parser(prog="jaxrnn", description="Train and inspect Elman RNNs.")
  parser.add_argument("--version", action="version", version=f"jaxrnn {jaxrnn.__version__}")
  commands = parser.add_subparsers(dest="command", required=True)
  train = commands.add_parser("train", help="train a task into a run directory")
  train.add_argument("task", metavar="TASK", help=f"one of: {', '.join(TASK_DEFAULTS)}")
  for name in TRAIN_OPTIONS:
    add_option(train, name)
    if name == "steps":
      train.add_argument("--epochs", type=float, help="instead of --steps: passes over the "
                         "training set (digits, sunspots, text)")
  train.add_argument("--run-dir", help="default: runs/TASK-DATE-TIME")
  add_run_options(train, DEVICES_HELP, job=True)
  train.set_defaults(handler=cmd_train)
  resume = commands.add_parser("resume", help="continue a run from its last checkpoint")
  resume.add_argument("run_dir", metavar="RUN_DIR")
  for name, help_text in RESUME_OVERRIDES.items():
    add_option(resume, name, help_text)
  add_run_options(resume, DEVICES_HELP + "; need not be the count the run started with", job=True)
  resume.set_defaults(handler=cmd_resume)
  sample = commands.add_parser("sample", help="generate text from a text run")
  sample.add_argument("run_dir", metavar="RUN_DIR")
  add_defaults(sample, prompt=("The ", "the text the sample continues"),
               length=(400, "characters to sample after the prompt"),
               temperature=(0.8, "below 1 sharpens the model's distribution, above 1 flattens"),
               seed=(0, "of the sampling"))
  sample.set_defaults(handler=cmd_sample)
  gradients = commands.add_parser("gradients", help="plot vanishing/exploding gradients")
  gradients.add_argument("--radii", type=float, nargs="+", default=[0.5, 0.9, 1.0, 1.1, 1.5],
                         help=f"spectral radii of the orthogonal W_hh, each from {RADII[0]:g} "
                         f"to {RADII[1]:g} (default 0.5 0.9 1 1.1 1.5)")
  add_defaults(gradients, steps=(50, "sequence length T"), hidden_size=(64, "H"),
               seed=(0, "of W_hh and the inputs"), out=("gradients.png", "the plot to write"))
  gradients.set_defaults(handler=cmd_gradients)
  demo = commands.add_parser("demo", help="the adding problem in under a minute")
  add_defaults(demo, seed=(0, "of the parameters and the data"))
  add_run_options(demo, DEVICES_HELP, job=False)
  demo.set_defaults(handler=cmd_demo)
  return parser


def stop(done: Callable[[], None] | None, status: int, line: str) -> int:
  """Prints ``line`` and returns ``status``; in a job (``done`` given) ends the process now."""
  if done is not None:
    job.leave(status, line)
  print(line, file=sys.stderr)
  return status


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the ``jaxrnn`` command line (``sys.argv``'s arguments when ``argv`` is ``None``; none:
  the demo, as ``python -m jaxrnn``); returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = build_parser().parse_args(argv or ["demo"])
  done = None
  try:
    if (done := join_job(args)) is None:
      use_every_core()
    args.handler(args)
  except RunError as error:
    return stop(done, 2, f"jaxrnn: error: {one_line(error)}")
  except TrainingStopped as error:
    return stop(done, 2 if isinstance(error, JobFailed) else 1, f"jaxrnn: {one_line(error)}")
  except KeyboardInterrupt:
    return stop(done, 130, "\njaxrnn: interrupted" + (
        f"; continue from the last checkpoint with: jaxrnn resume {one_line(args.run_dir)}"
        if args.command in ("train", "resume") else ""))
  except BrokenPipeError:                 # stdout closed early (| head): say nothing more
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141
  except OSError as error:                # a write no handler above names (a full disk)
    where = f" {error.filename}" if error.filename else ""
    return stop(done, 2, one_line(f"jaxrnn: error: could not read or write{where}: "
                                  f"{checkpoint.reason(error)}"))
  if done is not None:
    done()
  return 0
