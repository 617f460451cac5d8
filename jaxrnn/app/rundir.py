"""A run directory: its lock (one process at a time), ``metrics.jsonl`` (a JSON record per
step), ``checkpoints/``, and the errors a run reports."""

import contextlib
import fcntl
import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.app import checkpoint
from jaxrnn.app.config import Config, from_saved, upgraded
from jaxrnn.parallel import batch_mesh, replicate


class RunError(Exception):
  """A run that cannot start or go on for a reason the user can fix: one line, exit status 2."""


class TrainingStopped(Exception):
  """A non-finite loss, gradient or update: one line, exit status 1."""


class JobFailed(TrainingStopped):
  """Another process of a multi-process job died (its collectives fail): one line, exit status 2."""


def one_line(text: object) -> str:
  """``str(text)`` with its unprintable characters escaped (a newline in a path shows as ``\\n``),
  so that a message printed from it stays one line."""
  return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def is_primary() -> bool:
  """Whether this process writes the run's files and prints (process 0 of a job; any lone one)."""
  return jax.process_index() == 0


def require_extras(*modules: str) -> None:
  """Imports ``modules`` now, or fails with a one-line hint to install the ``tasks`` extra."""
  for name in modules:
    try:
      importlib.import_module(name)
    except ImportError:
      raise RunError(f"this command needs {name.split('.')[0]}: "
                     "pip install 'jaxrnn[tasks]'") from None


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
  """Holds an exclusive OS lock on ``run_dir/lock`` (creating ``run_dir``) for the block;
  :class:`RunError` when another process (named by its pid) holds it or the mkdir fails."""
  try:
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / "lock", "a+b", buffering=0)  # unbuffered: nothing left to flush
  except OSError as error:
    raise RunError(f"cannot use {run_dir} as a run directory: {checkpoint.reason(error)}") from None
  with handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().decode(errors="replace").strip() or "unknown"
      raise RunError(f"{run_dir} is in use by process {holder} (a train or resume); wait for it "
                     "to finish or use another --run-dir") from None
    try:
      handle.truncate(0)
      handle.write(str(os.getpid()).encode())
    except OSError as error:                # a full disk
      raise RunError(f"cannot write {run_dir / 'lock'}: {checkpoint.reason(error)}") from None
    yield


def read_metrics(path: Path, up_to: int) -> list[dict[str, Any]]:
  """The records of ``metrics.jsonl`` with ``step <= up_to`` (torn lines dropped; none without a
  file); :class:`RunError` when it cannot be read."""
  if not path.exists():
    return []
  try:
    lines = path.read_text(errors="replace").splitlines()
  except OSError as error:
    raise RunError(f"cannot read {path}: {checkpoint.reason(error)}") from None
  records = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= up_to:
      records.append(record)
  return records


def checkpoint_state(params: Any, opt_state: Any, seed: int, step: int) -> dict[str, Any]:
  """A checkpoint's state (replicated over a multi-process job's devices: orbax writes it once)."""
  state = {"params": params, "opt_state": opt_state,
           "key": jax.random.key_data(jax.random.key(seed)), "step": jnp.asarray(step, jnp.int32)}
  return replicate(state, batch_mesh()) if jax.process_count() > 1 else state


def restore_state(checkpoints: Any, step: int, config: Config, params: Any, optimizer: Any,
                  run_dir: Path) -> dict[str, Any]:
  """The state of checkpoint ``step``; :class:`RunError` when it does not fit ``config``."""
  like = checkpoint_state(params, optimizer.init(params), config.seed, 0)
  try:
    return checkpoint.restore(checkpoints, step, like)
  except ValueError as error:
    if "shape" not in str(error).lower():
      raise
    raise RunError(f"checkpoint {step} in {run_dir} does not fit its config: "
                   f"{mismatch(checkpoints, step, config) or checkpoint.reason(error)}") from None


def mismatch(checkpoints: Any, step: int, config: Config) -> str | None:
  """Which model size of ``config`` the weights of checkpoint ``step`` disagree with, e.g.
  ``"hidden_size is 8 in the config, 16 in the saved weights"``; ``None`` if none does."""
  with checkpoint.quiet():
    shapes = checkpoint.saved_shapes(checkpoints, step)
  cells = [name.split(".")[2:4] for name in shapes
           if name.startswith("params.layers.") and name.endswith(".W_hh")]
  if not cells:                          # not a jaxrnn model's tree: orbax's reason will do
    return None
  saved = {"hidden_size": shapes["params.layers.0.0.W_hh"][0],
           "num_layers": 1 + max(int(layer) for layer, _ in cells),
           "bidirectional": any(direction == "1" for _, direction in cells)}
  return next((f"{name} is {getattr(config, name)} in the config, {value} in the saved weights"
               for name, value in saved.items() if getattr(config, name) != value), None)


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
    for step in sorted(checkpoints.all_steps(), reverse=True):
      try:
        with checkpoint.quiet():
          saved = checkpoint.saved_config(checkpoints, step)
      except Exception:  # a damaged file: restore_newest sets it aside and says so
        continue
      try:
        return from_saved(saved), step
      except ValueError as error:
        raise RunError(f"the checkpoint config in {run_dir} does not serve: {error}") from None
  finally:
    checkpoints.close()
  raise RunError(f"{run_dir} holds no complete checkpoint")


def restore_newest(checkpoints: Any, config: Config, params: Any, optimizer: Any,
                   run_dir: Path, set_aside: bool = True) -> dict[str, Any]:
  """The state of the newest checkpoint that restores; a damaged one is named in one line on
  stderr and, with ``set_aside`` (for a command that owns the run), moved to
  ``RUN_DIR/damaged/STEP``."""
  for step in sorted(checkpoints.all_steps(), reverse=True):
    try:
      with checkpoint.quiet():
        checkpoint.saved_config(checkpoints, step)
        return restore_state(checkpoints, step, config, params, optimizer, run_dir)
    except RunError:
      raise
    except Exception as error:  # a damaged file: orbax, tensorstore, JSON and OS errors alike
      if is_primary():
        moved = (f"moved it to {checkpoint.set_aside(checkpoints, step, run_dir / 'damaged')}, "
                 if set_aside else "")
        print(one_line(f"jaxrnn: checkpoint {step} in {run_dir} does not restore "
                       f"({checkpoint.reason(error)}); {moved}going on from an older one"),
              file=sys.stderr)
  raise RunError(f"no checkpoint in {run_dir} restores; start again with jaxrnn train")


def existing_run_message(run_dir: Path, config: Config, checkpoints: Any, step: int) -> str:
  """Why ``train`` refuses ``run_dir``: it holds this run, one of another config, or damage."""
  try:
    with checkpoint.quiet():
      saved = checkpoint.saved_config(checkpoints, step)
  except Exception:  # a damaged file: orbax, JSON and OS errors alike
    return f"{run_dir} holds checkpoints that do not read; use another --run-dir"
  saved = upgraded(saved)
  diff = [f"{k} {saved.get(k)!r} there, {v!r} here" for k, v in config.asdict().items()
          if saved.get(k) != v]
  if not diff:
    return f"{run_dir} already holds this run; continue it with: jaxrnn resume {run_dir}"
  return (f"{run_dir} holds a checkpoint from a different config ({'; '.join(diff)}); "
          "use another --run-dir")
