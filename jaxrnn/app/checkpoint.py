"""Checkpoints of a training run with orbax-checkpoint: atomic, keeping the last N.

A checkpoint is a pytree ``state`` (params, optimizer state, RNG key, step)
plus the run's config as JSON, saved as step ``k`` (the number of completed
training steps) under ``directory/k``. Orbax writes each one into a temporary
directory and renames it into place only once every file is on disk, so a
process killed during a save leaves the previous checkpoint loadable (and the
partial one is ignored and cleaned up by the next save).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import numpy as np


class CheckpointError(Exception):
  """A checkpoint that cannot be written or read, said in one short line."""


def orbax() -> ModuleType:
  """``orbax.checkpoint``, imported on first use (it is in the ``tasks`` extra, not the core)."""
  return importlib.import_module("orbax.checkpoint")


def manager(directory: str | Path, keep: int = 3) -> Any:
  """A synchronous ``CheckpointManager`` on ``directory`` that keeps the ``keep`` latest steps."""
  ocp = orbax()
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                         create=True)
  return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def reason(error: BaseException) -> str:
  """One short line saying why ``error`` happened (no tensorstore specs, no tracebacks)."""
  text = str(error)
  if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left" in text:
    return "no space left on device"
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
  return first if len(first) <= 160 else first[:157] + "..."


def non_finite(state: Any) -> str | None:
  """The path (e.g. ``['params'].W_hy``) of the first array of ``state`` holding NaN or inf."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    values = np.asarray(leaf)
    if np.issubdtype(values.dtype, np.inexact) and not np.all(np.isfinite(values)):
      return jax.tree_util.keystr(path)
  return None


def save(checkpoints: Any, step: int, state: Any, config: dict[str, Any]) -> None:
  """Saves ``state`` (a pytree of arrays) and ``config`` as step ``step``; returns when on disk.

  Raises:
    ValueError: ``state`` holds NaN or inf (nothing is written).
    CheckpointError: the write failed (e.g. a full disk); the earlier
      checkpoints are untouched.
  """
  bad = non_finite(state)
  if bad is not None:
    raise ValueError(f"refusing to save step {step}: {bad} holds NaN or inf")
  ocp = orbax()
  try:
    with quiet():
      checkpoints.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     config=ocp.args.JsonSave(config)),
                       force=True)
      checkpoints.wait_until_finished()
  except Exception as error:  # orbax and tensorstore raise many types
    raise CheckpointError(f"could not write checkpoint {step} in {checkpoints.directory}: "
                          f"{reason(error)}") from None


def latest_step(checkpoints: Any) -> int | None:
  """The newest complete step, or ``None`` when there is none."""
  return checkpoints.latest_step()


def newest_first(checkpoints: Any) -> list[int]:
  """Every complete step, newest first."""
  return sorted(checkpoints.all_steps(), reverse=True)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
  """Silences what orbax's background threads print while a read or write fails.

  A failed read or write (a damaged file, a full disk) leaves tensorstore
  callbacks and orbax threads that report on stderr and through logging
  ("Event loop is closed", "_SignalingThread.run() raised an exception");
  the caller reports the failure itself, in one line. A failing block ends
  with a short wait for those stragglers.
  """
  loggers = [logging.getLogger(name) for name in ("asyncio", "absl")]
  levels = [log.level for log in loggers]
  for log in loggers:
    log.setLevel(logging.CRITICAL)
  try:
    with contextlib.redirect_stderr(io.StringIO()):
      try:
        yield
      except Exception:
        time.sleep(0.2)
        raise
  finally:
    for log, level in zip(loggers, levels):
      log.setLevel(level)


def set_aside(checkpoints: Any, step: int, folder: Path) -> Path:
  """Moves the files of checkpoint ``step`` into ``folder/step`` (kept, no longer a checkpoint)."""
  folder.mkdir(parents=True, exist_ok=True)
  target = folder / str(step)
  shutil.rmtree(target, ignore_errors=True)
  shutil.move(str(Path(checkpoints.directory) / str(step)), target)
  checkpoints.reload()
  return target


def saved_config(checkpoints: Any, step: int) -> dict[str, Any]:
  """The config saved with step ``step``."""
  ocp = orbax()
  return checkpoints.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


def restore(checkpoints: Any, step: int, like: Any) -> Any:
  """The state saved as step ``step``, with the tree structure, shapes and dtypes of ``like``.

  Raises:
    ValueError: the saved arrays have other shapes than ``like``'s.
    CheckpointError: the saved arrays hold NaN or inf.
  """
  ocp = orbax()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  state = checkpoints.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract))).state
  bad = non_finite(state)
  if bad is not None:
    raise CheckpointError(f"{bad} holds NaN or inf")
  return state
