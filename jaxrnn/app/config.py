"""A run's :class:`Config`: every option that defines it, checked when it is built (from the
command line or from the JSON saved in every checkpoint)."""

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxrnn.spec import ACTIVATION_NAMES, GRADIENTS, SCHEMES
from jaxrnn.train import OPTIMIZERS

MAX_STEPS = 2**31 - 1
FLOAT32_LOW, FLOAT32_HIGH = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
"""The magnitudes float32 holds without rounding to 0 or overflowing (1.2e-38 to 3.4e38): the
learning rate, clipping, dropout, ``sample``'s temperature and ``gradients``' radii are 0 or between
them, whatever the run's dtype."""
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "adding": dict(steps=3000, hidden_size=64, activation="relu", init="identity",
                   learning_rate=1e-2, warmup=300, seq_len=50),
    "copy": dict(steps=3000, hidden_size=128, learning_rate=3e-3, seq_len=5, delay=10),
    "sine": dict(steps=1000, hidden_size=32, learning_rate=3e-3, seq_len=50),
    "digits": dict(steps=1500, hidden_size=128, learning_rate=3e-3),
    "sunspots": dict(steps=1000, batch_size=32, hidden_size=32, learning_rate=3e-3, seq_len=40,
                     eval_every=100),
    "text": dict(steps=2000, batch_size=32, hidden_size=256, learning_rate=3e-3, seq_len=64,
                 eval_every=500)}
"""Each task's defaults, over :class:`Config`'s own."""

CHOICES: dict[str, tuple[str, ...]] = {
    "task": tuple(TASK_DEFAULTS), "optimizer": tuple(OPTIMIZERS), "activation": ACTIVATION_NAMES,
    "init": SCHEMES, "gradient": GRADIENTS, "read": ("rows", "pixels"),
    "dtype": ("float32", "float64")}
COUNTS = ("steps", "batch_size", "hidden_size", "num_layers", "seq_len", "delay", "eval_every",
          "save_every", "keep")
RENAMED = {"checkpoint_every": "save_every"}
"""Fields renamed since 0.2.0: old name -> new name (a 0.2.0 run directory still resumes)."""
ADDED = {"warmup": 0}
"""Fields added since 0.3.0, and the value an older run directory had (it still resumes)."""


def check_real(option: str, value: Any, rule: str, ok: Callable[[float], bool]) -> None:
  """Raises ``ValueError`` naming ``option`` and ``rule`` unless ``value`` is a real number, ``ok``,
  and 0 or of a magnitude float32 holds (:data:`FLOAT32_LOW` to :data:`FLOAT32_HIGH`; not inf, nor
  an integer of 400 digits)."""
  if (not isinstance(value, (int, float)) or isinstance(value, bool) or value != value
      or not ok(value)):
    raise ValueError(f"{option} must be a finite number {rule}, got {value!r}")
  if value and not FLOAT32_LOW <= abs(value) <= FLOAT32_HIGH:
    raise ValueError(f"{option} must be a finite number {rule}, of a magnitude float32 holds "
                     f"(from {FLOAT32_LOW:.4g} to {FLOAT32_HIGH:.4g}, or 0), got {value!r}")


def flag(name: str) -> str:
  """The command-line option of config field ``name``."""
  short = {"num_layers": "--layers", "learning_rate": "--lr"}
  return short.get(name) or "--" + name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run; a value no run can use is a ``ValueError`` naming its option.
  ``vocab`` (a text corpus's characters) and ``data_fingerprint`` (a hash of data read from
  files) are filled in when a run starts; the other fields are the options of ``jaxrnn train``."""
  task: str = "adding"
  steps: int = 2000
  batch_size: int = 64
  hidden_size: int = 64
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  warmup: int = 0
  clip_norm: float = 1.0
  activation: str = "tanh"
  init: str = "orthogonal"
  gradient: str = "fused"
  seed: int = 0
  seq_len: int = 50
  delay: int = 10
  read: str = "rows"
  text_file: str | None = None
  eval_every: int = 250
  save_every: int = 500
  keep: int = 3
  dtype: str = "float32"
  vocab: str = ""
  data_fingerprint: str = ""

  def __post_init__(self):
    for name, allowed in CHOICES.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"unknown {flag(name)[2:]} {getattr(self, name)!r}; choose from "
                         f"{', '.join(allowed)}")
    for name, low, high in (*((name, 1, MAX_STEPS) for name in COUNTS), ("seed", 0, 2**32 - 1),
                            ("warmup", 0, MAX_STEPS)):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{flag(name)} must be a whole number from {low} to {high}, got {value!r}")
    for name, ok, rule in (("learning_rate", lambda v: v > 0, "> 0"),
                           ("clip_norm", lambda v: v >= 0, ">= 0 (0 disables clipping)"),
                           ("dropout", lambda v: 0 <= v < 1, "in [0, 1)")):
      check_real(flag(name), getattr(self, name), rule, ok)
    if not isinstance(self.bidirectional, bool):
      raise ValueError(f"--bidirectional must be true or false, got {self.bidirectional!r}")
    for name in ("text_file", "vocab", "data_fingerprint"):
      value = getattr(self, name)
      if not isinstance(value, str) and (value is not None or name != "text_file"):
        raise ValueError(f"{name} must be a string, got {value!r}")
    if self.dropout and self.num_layers < 2:
      raise ValueError("--dropout acts between layers: it needs --layers 2 or more")
    if self.dropout and self.gradient == "bptt":
      raise ValueError("--gradient bptt is the plain hand-derived oracle: it takes no --dropout")

  def replace(self, **changes: Any) -> "Config":
    """This config with ``changes`` (checked again)."""
    return dataclasses.replace(self, **changes)

  def asdict(self) -> dict[str, Any]:
    """The fields as a JSON-ready dict."""
    return dataclasses.asdict(self)


FIELDS = tuple(field.name for field in dataclasses.fields(Config))


def resolve_config(task: str, **options: Any) -> Config:
  """The :class:`Config` of ``task``: its :data:`TASK_DEFAULTS`, overridden by non-``None``
  options; ``ValueError`` for an unknown task or option or a value no run can use."""
  if task not in TASK_DEFAULTS:
    raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASK_DEFAULTS)}")
  unknown = set(options) - set(FIELDS)
  if unknown:
    raise ValueError(f"unknown options {sorted(unknown)}")
  given = {k: v for k, v in options.items() if v is not None}
  return Config(**{**TASK_DEFAULTS[task], **given, "task": task})


def upgraded(saved: dict[str, Any]) -> dict[str, Any]:
  """A saved config's fields as this version names them: :data:`RENAMED` renamed back,
  :data:`ADDED` filled in with the value an older version ran with."""
  return {**ADDED, **{RENAMED.get(k, k): v for k, v in saved.items()}}


def from_saved(saved: Any) -> Config:
  """The :class:`Config` a checkpoint saved (fields renamed since 0.2.0 renamed back);
  ``ValueError`` when its fields are another version's or a value no run can use."""
  if not isinstance(saved, dict):
    raise ValueError("the saved config is not a JSON object")
  saved = upgraded(saved)
  if set(saved) != set(FIELDS):
    raise ValueError("the saved config was written by another version of jaxrnn (its fields "
                     f"differ: {sorted(set(saved) ^ set(FIELDS))})")
  return Config(**saved)
