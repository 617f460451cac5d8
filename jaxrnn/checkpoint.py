"""Checkpoints of a training run with orbax-checkpoint: atomic, keeping the last N.

A checkpoint is a pytree ``state`` (params, optimizer state, RNG key, step)
plus the run's config as JSON, saved as step ``k`` (the number of completed
training steps) under ``directory/k``. Orbax writes each one into a temporary
directory and renames it into place only once every file is on disk, so a
process killed during a save leaves the previous checkpoint loadable (and the
partial one is ignored and cleaned up by the next save).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import importlib
from types import ModuleType

import jax


def orbax() -> ModuleType:
  """``orbax.checkpoint``, imported on first use (it is in the ``tasks`` extra, not the core)."""
  return importlib.import_module("orbax.checkpoint")


def manager(directory: str | Path, keep: int = 3) -> Any:
  """A synchronous ``CheckpointManager`` on ``directory`` that keeps the ``keep`` latest steps."""
  ocp = orbax()
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                         create=True)
  return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(checkpoints: Any, step: int, state: Any,
         config: dict[str, Any]) -> None:
  """Saves ``state`` (a pytree of arrays) and ``config`` as step ``step``; returns when on disk."""
  ocp = orbax()
  checkpoints.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 config=ocp.args.JsonSave(config)), force=True)
  checkpoints.wait_until_finished()


def latest_step(checkpoints: Any) -> int | None:
  """The newest complete step, or ``None`` when there is none."""
  return checkpoints.latest_step()


def saved_config(checkpoints: Any, step: int) -> dict[str, Any]:
  """The config saved with step ``step``."""
  ocp = orbax()
  return checkpoints.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


def restore(checkpoints: Any, step: int, like: Any) -> Any:
  """The state saved as step ``step``, with the tree structure, shapes and dtypes of ``like``.

  Raises:
    ValueError: the saved arrays have other shapes than ``like``'s.
  """
  ocp = orbax()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  return checkpoints.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract))).state
