"""Charts of evaluation results as PNG files.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global state, no display
needed). `interval_bar_chart` is the paper's Table 1 as a picture: one bar per subset with its
interval, and the random baseline.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mopoe_jax.platform import paths

CHART_SIZE = (1200, 500)  # pixels (width, height) of `interval_bar_chart`
_DPI = 100
_BAR_RGB = "#4C72B0"
_DRAW_RGB = "#DD8452"


def _array(values: Sequence[float | None]) -> np.ndarray:
  return np.array([np.nan if v is None else v for v in values], np.float64)


def interval_bar_chart(
  path: str,
  names: Sequence[str],
  *,
  means: Sequence[float | None],
  intervals: Sequence[Sequence[float] | None],
  draws: Sequence[Sequence[float | None]],
  baselines: Sequence[float | None],
  title: str,
  ylabel: str,
  baseline_label: str = "baseline",
  note: str | None = None,
  size: tuple[int, int] = CHART_SIZE,
) -> None:
  """Bars with intervals, per-draw values and a baseline; two panels, written as a PNG.

  Left: the whole scale [0, 1], one bar per name at its mean, the interval as an error bar and
  the baseline as a dashed line across each bar (one line when all baselines are equal). Right:
  the same means and intervals zoomed to the values' range, with every draw as a dot, so that
  differences of a few thousandths stay visible.

  Args:
    path: the PNG to write (its directory is created).
    names: one per bar ('frontal', ..., 'frontal+lateral+text').
    means: per name, the mean (None: no bar).
    intervals: per name, [low, high] or None.
    draws: per name, the per-draw values (None entries left out).
    baselines: per name, the baseline (e.g. the label's prevalence among the scored studies).
    title, ylabel, baseline_label: texts.
    note: a line under the panels (e.g. a paired difference).
    size: (width, height) in pixels.
  """
  mean = _array(means)
  low = np.array([np.nan if i is None else i[0] for i in intervals], np.float64)
  high = np.array([np.nan if i is None else i[1] for i in intervals], np.float64)
  err = np.nan_to_num(np.stack([mean - low, high - mean]), nan=0.0)
  base = _array(baselines)
  x = np.arange(len(names))
  ticks = [n.replace("+", "+\n") for n in names]

  # Matplotlib is imported here, where a chart is drawn: runs that draw none (training, the
  # evaluators without charts) do not load it.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI, layout="constrained")
  FigureCanvasAgg(fig)
  whole, zoom = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.3]})

  whole.bar(x, np.nan_to_num(mean), width=0.7, color=_BAR_RGB, label="mean")
  whole.errorbar(
    x, mean, yerr=err, fmt="none", ecolor="black", capsize=4, linewidth=1.2, label="interval"
  )
  for i, b in enumerate(base):
    if np.isfinite(b):
      whole.hlines(
        b,
        i - 0.45,
        i + 0.45,
        colors="black",
        linestyles="dashed",
        linewidth=1.5,
        label=baseline_label if i == 0 else None,
      )
  for i, m in enumerate(mean):
    if np.isfinite(m) and m > 0.1:
      whole.text(i, m - 0.03, f"{m:.3f}", ha="center", va="top", color="white", fontsize=8)
  whole.set_ylim(0.0, 1.15)
  whole.set_yticks(np.linspace(0.0, 1.0, 6))
  whole.set_ylabel(ylabel)
  whole.set_title("whole scale", fontsize=10)
  whole.legend(loc="upper center", ncols=3, fontsize=8, framealpha=0.9)

  points = [np.asarray([v for v in d if v is not None], np.float64) for d in draws]
  for i, p in enumerate(points):
    if p.size:
      jitter = np.linspace(-0.18, 0.18, p.size) if p.size > 1 else np.zeros(1)
      zoom.scatter(
        i + jitter,
        p,
        s=12,
        color=_DRAW_RGB,
        alpha=0.7,
        zorder=2,
        label="one draw" if i == 0 else None,
      )
  zoom.errorbar(
    x,
    mean,
    yerr=err,
    fmt="o",
    color=_BAR_RGB,
    ecolor=_BAR_RGB,
    capsize=6,
    markersize=7,
    linewidth=2,
    zorder=3,
    label="mean and interval",
  )
  values = np.concatenate([mean, low, high] + points)
  values = values[np.isfinite(values)]
  if values.size:
    span = max(float(values.max() - values.min()), 1e-3)
    bottom, top = values.min() - 0.15 * span, values.max() + 0.15 * span
    zoom.set_ylim(bottom, top)
    for i, b in enumerate(base):
      if np.isfinite(b) and bottom <= b <= top:
        zoom.hlines(b, i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1.5)
  zoom.grid(axis="y", alpha=0.3)
  zoom.set_title("zoomed: every draw, the mean and its interval", fontsize=10)
  zoom.legend(loc="best", fontsize=8, framealpha=0.9)

  for ax in (whole, zoom):
    ax.set_xticks(x, ticks, fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
  fig.suptitle(title, fontsize=11)
  if note:
    fig.supxlabel(note, fontsize=10)
  paths.save_figure(path, lambda f: fig.savefig(f, format="png", dpi=_DPI))
