"""The probe tables (Markdown) and the Table-1 bar chart of `mopoe_jax.evaluation.probes`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mopoe_jax.evaluation import charts
from mopoe_jax.evaluation.common import HEADLINE_LABEL, fmt, table

if TYPE_CHECKING:  # probes imports this module
  from mopoe_jax.evaluation.probes import MetricTable, PairedDifference, ProbesResult

CHART_FILE = "probes_table1.png"
INTERVAL_LEVEL = 0.95


def _interval_text(interval) -> str:
  return "n/a" if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _difference_text(d: PairedDifference | None, repeats: int, metric: str) -> str:
  if d is None or d.mean is None:
    return f"Full set minus the best single modality ({metric}): n/a."
  text = (
    f"Full set minus the best single modality ({metric}, {d.full} − "
    f"{d.best_single}), paired over the {d.n} shared draws: {d.mean:+.3f}"
  )
  if d.std is not None:
    text += (
      f" ± {d.std:.3f}, {INTERVAL_LEVEL:.0%} interval [{d.interval[0]:+.3f}, {d.interval[1]:+.3f}]"
    )
  return text + "."


def _cell(section: MetricTable, skipped: dict, name: str, label: str) -> str:
  value = section.subsets[name][label]
  if value is None:
    return skipped[name].get(label, "n/a")
  return fmt(value, section.std[name][label])


def probes_markdown(
  probes: ProbesResult,
  method: str = "MoPoE (this model)",
  level: int = 1,
  chart: str | None = CHART_FILE,
) -> str:
  """The probe tables as Markdown: Table 1 (label Finding) in both metrics, and every label."""
  names = list(probes.subsets)
  labels = list(probes.random)
  s = probes.settings
  repeats = s.repeats
  standard, legacy = probes.standard, probes.legacy
  h = "#" * level
  label = HEADLINE_LABEL if HEADLINE_LABEL in labels else labels[0]

  def table1(section, row_name, random_row):
    rows = [
      [f"{row_name}: mean ± std over {repeats} draws"]
      + [_cell(section, probes.skipped, n, label) for n in names],
      [f"{INTERVAL_LEVEL:.0%} interval of the mean (t, {repeats - 1} df)"]
      + [_interval_text(section.interval[n][label]) for n in names],
    ]
    if random_row:
      rows.append(
        ["random (prevalence)"] + [fmt(probes.random_per_subset[n][label]) for n in names]
      )
    return table(["", *names], rows)

  train_counts = [round(float(np.mean(probes.num_examples.train[n]))) for n in names]
  out = [f"{h} Latent linear probes: average precision, label {label}, {s.test_split} split", ""]
  if chart:
    out += [
      f"![Table 1 as a bar chart: mean and {INTERVAL_LEVEL:.0%} interval per subset, "
      f"random baseline]({chart})",
      "",
    ]
  out += [
    table1(standard, method, True),
    "",
    _difference_text(probes.difference["standard"].get(label), repeats, "standard"),
    "",
    f"Metric: {s.metric}. A logistic regression on the posterior mean of each subset, "
    f"per draw; {repeats} draws of {s.train_examples} train studies, {s.draws} "
    "(training rows per draw, mean: "
    + ", ".join(f"{n} {c}" for n, c in zip(names, train_counts))
    + f"; {probes.num_examples.train_studies} distinct studies drawn). "
    f"Interval: {s.interval}; it covers the spread over probe draws only, not the test "
    f"split's sampling error nor the model's training seed. Targets: {s.targets}. The "
    f"random row is each column's prevalence among its scored test studies; over the "
    f"whole split it is {fmt(probes.random[label])}.",
    "",
    f"{h} LEGACY metric, label {label}: the reference code's number, for comparison with "
    "the paper only",
    "",
    f"{s.legacy}. Same fits and draws as above. A probe that predicts no positive scores "
    "0, so the prevalence is no random baseline on this scale.",
    "",
    table1(legacy, f"LEGACY, {method}", False),
    "",
    _difference_text(probes.difference["legacy"].get(label), repeats, "LEGACY"),
    "",
    f"{h} Every label: average precision, mean ± std over {repeats} draws",
    "",
    table(
      ["label"] + names + ["random"],
      [
        [l] + [_cell(standard, probes.skipped, n, l) for n in names] + [fmt(probes.random[l])]
        for l in labels
      ],
    ),
    "",
    f"{h} Every label: LEGACY metric, mean ± std over {repeats} draws",
    "",
    table(
      ["label"] + names,
      [[l] + [_cell(legacy, probes.skipped, n, l) for n in names] for l in labels],
    ),
  ]
  return "\n".join(out) + "\n"


def write_chart(probes: ProbesResult, path: str) -> None:
  """Table 1 as a bar chart (`charts.interval_bar_chart`) of the headline label."""
  names = list(probes.subsets)
  label = HEADLINE_LABEL if HEADLINE_LABEL in probes.random else list(probes.random)[0]
  s = probes.settings
  d = probes.difference["standard"].get(label)
  note = None
  if d is not None and d.interval is not None:
    note = (
      f"{d.full} − {d.best_single}: {d.mean:+.3f} "
      f"[{d.interval[0]:+.3f}, {d.interval[1]:+.3f}] (paired)"
    )
  charts.interval_bar_chart(
    path,
    names,
    means=[probes.subsets[n][label] for n in names],
    intervals=[probes.interval[n][label] for n in names],
    draws=[probes.draws[n][label] for n in names],
    baselines=[probes.random_per_subset[n][label] for n in names],
    title=(
      f"Latent linear probes, label {label}, {s.test_split} split: mean AP, "
      f"{INTERVAL_LEVEL:.0%} t-interval over {s.repeats} shared draws"
    ),
    ylabel="average precision",
    baseline_label="random (prevalence)",
    note=note,
  )
