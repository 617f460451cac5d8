"""The pictures of the command line: a run's loss curves, and the vanishing/exploding gradients
(matplotlib, of the ``tasks`` extra, imported only when a picture is drawn)."""

from pathlib import Path
from typing import Any

import numpy as np

from jaxrnn.app.tasks import Task, higher_is_better


def log_scale(values: Any) -> str:
  """``"log"`` when every value is positive, ``"linear"`` otherwise (a zero loss, say)."""
  values = np.asarray(values, float)
  return "log" if values.size and np.all(values > 0) else "linear"


LOSS_UNITS = {"cross_entropy": "cross-entropy, nats per step",
              "squared_error": "squared error per step"}
"""What the training loss (the mean over live steps) measures, by the task's loss."""


def plain_ticks(ax: Any) -> None:
  """Labels a log axis's ticks as plain numbers (``0.3``, not ``3x10^-1``), the minor ones only
  where matplotlib's own log labels would be (an axis spanning a decade or less), so that no two
  labels overlap."""
  from matplotlib.ticker import LogFormatter  # pylint: disable=import-outside-toplevel

  class Plain(LogFormatter):
    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
      return f"{x:.3g}"

  if ax.get_yscale() == "log":
    ax.yaxis.set_major_formatter(Plain())
    ax.yaxis.set_minor_formatter(Plain(labelOnlyBase=False))


def plot_run(records: list[dict[str, Any]], task: Task, path: Path) -> None:
  """Saves the training loss (in its unit) and the test metric (against the baseline) per step
  as a PNG; log axes are labelled with plain numbers."""
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
  ax_loss.set(xlabel="step", ylabel=f"training loss ({LOSS_UNITS[task.loss]})",
              yscale=log_scale(loss), title="training loss")
  ax_test.plot([r["step"] for r in test], [r["test"] for r in test], "o-", label="model")
  ax_test.axhline(task.baseline, color="gray", ls="--", label=f"baseline ({task.baseline_name})")
  ax_test.set(xlabel="step", ylabel=f"test {task.metric}", title=f"held-out {task.metric}")
  if not higher_is_better(task.metric):
    ax_test.set_yscale(log_scale([r["test"] for r in test] + [task.baseline]))
  ax_test.legend()
  for ax in (ax_loss, ax_test):
    plain_ticks(ax)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_gradients(curves: dict[str, list[tuple[float, Any, Any, Any, Any]]], path: Path) -> None:
  """Saves, one panel per activation, ``log10 ||dh_t/dh_0||`` as measured (solid), at the rate
  of the largest Lyapunov exponent, ``exp(lambda_1 t)`` (dotted), and the seed's bound
  ``(||W_hh|| ||act'||)^t`` (dashed) against ``t``; ``curves[activation]`` holds ``(radius,
  t [n], measured [n], rate [n], bound [n])`` per radius, all three in ``log10``."""
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(11, 4.6))
  axes = fig.subplots(1, len(curves), sharey=True)
  for ax, (activation, rows) in zip(axes, curves.items()):
    colors = colormaps["viridis"](np.linspace(0, 0.9, len(rows)))
    for color, (radius, steps, measured, rate, bound) in zip(colors, rows):
      ax.plot(steps, measured, color=color, label=f"radius {radius:g}")
      ax.plot(steps, rate, color=color, ls=":", lw=1.5)
      ax.plot(steps, bound, color=color, ls="--", lw=1)
    ax.set(xlabel="t", title=f"{activation}: ||dh_t/dh_0|| against t")
  axes[0].set_ylabel("log10 of the norm")
  axes[0].add_artist(axes[0].legend(loc="lower left", fontsize="small"))
  styles = [Line2D([], [], color="gray", ls=ls) for ls in ("-", ":", "--")]
  axes[-1].legend(styles, ["measured ||dh_t/dh_0||", "exp(lambda_1 t), lambda_1 from QR",
                           "seed's bound (||W_hh|| ||act'||)^t"], loc="lower left",
                  fontsize="small")
  fig.suptitle("Solid: the measured norm. Dotted: the rate of the largest Lyapunov exponent. "
               "Dashed: the seed's bound.", fontsize="medium")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
