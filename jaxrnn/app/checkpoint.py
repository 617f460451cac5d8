"""Checkpoints with orbax-checkpoint: atomic (a save killed midway leaves the previous one
loadable), keeping the last N, each a pytree ``state`` plus the run's config as JSON."""

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
  handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
  with quiet():                         # it reads every step's metadata, damaged ones too
    return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                 item_handlers=handlers)    # so a fresh one reads metadata


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
  return next((jax.tree_util.keystr(path) for path, leaf in
               jax.tree_util.tree_flatten_with_path(state)[0] if not np.isfinite(leaf).all()), None)


def save(checkpoints: Any, step: int, state: Any, config: dict[str, Any]) -> None:
  """Saves ``state`` and ``config`` as step ``step``; returns when on disk. ``ValueError`` (nothing
  written) when ``state`` holds NaN or inf, :class:`CheckpointError` when the write fails (e.g. a
  full disk; earlier checkpoints are untouched)."""
  if (bad := non_finite(state)) is not None:
    raise ValueError(f"refusing to save step {step}: {bad} holds NaN or inf")
  ocp = orbax()
  try:
    with quiet():
      checkpoints.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     config=ocp.args.JsonSave(config)), force=True)
      checkpoints.wait_until_finished()
  except Exception as error:  # orbax and tensorstore raise many types
    raise CheckpointError(f"could not write checkpoint {step} in {checkpoints.directory}: "
                          f"{reason(error)}") from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
  """Silences what orbax's and tensorstore's threads print (stderr, logging) while a read or write
  fails, waiting briefly for them when the block fails; the caller reports in one line."""
  loggers = {log: log.level for log in map(logging.getLogger, ("asyncio", "absl"))}
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
    for log, level in loggers.items():
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


def saved_shapes(checkpoints: Any, step: int) -> dict[str, tuple[int, ...]]:
  """The shape of every array saved as step ``step``, by name (``params.layers.0.0.W_hh``), from
  orbax's metadata: no array is read."""
  return {a.name: tuple(a.shape) for a in jax.tree.leaves(checkpoints.item_metadata(step).state)}


def restore(checkpoints: Any, step: int, like: Any) -> Any:
  """The state saved as step ``step``, structured as ``like``; ``ValueError`` naming an array whose
  saved shape differs (checked before reading), :class:`CheckpointError` for NaN or inf."""
  ocp = orbax()
  shapes = saved_shapes(checkpoints, step)
  for name, leaf in zip(jax.tree.leaves(ocp.tree.get_param_names(like, include_empty_nodes=False)),
                        jax.tree.leaves(like)):
    if shapes.get(name, np.shape(leaf)) != np.shape(leaf):
      raise ValueError(f"{name} has shape {shapes[name]} in the checkpoint, not {np.shape(leaf)}")
  state = checkpoints.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
      jax.tree.map(ocp.utils.to_shape_dtype_struct, like)))).state
  if (bad := non_finite(state)) is not None:
    raise CheckpointError(f"{bad} holds NaN or inf")
  return state
