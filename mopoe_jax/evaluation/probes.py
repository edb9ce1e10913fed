"""Latent linear probes (the paper's Table 1), as a measurement over shared draws.

The protocol: docs/model.md#evaluation; how it is measured here: docs/evaluation.md.

For every subset, the posterior MEAN of every study for which the subset is valid (all its
modalities available); per label, a logistic regression trained on ``eval.probes.train_examples``
train studies drawn with replacement, scored on the whole test split by average precision of
the predicted probabilities. ``eval.probes.repeats`` draws, SHARED by all subsets
(`probe_draws`, `subset_rows`): the table gives the mean, the standard deviation and a 95%
t-interval of the mean over the draws (`mean_interval`), and the full set minus the best single
modality as a difference paired over the same draws (`paired_difference`). The reference's own
number (LEGACY: hard predictions, arguments of ``average_precision_score`` swapped) comes from
the same fits and is always reported beside it, labelled.

`linear_probes` takes the encoded studies (`ProbeInputs`) and its settings (`ProbeSettings`) and
returns a `ProbesResult`; the evaluator (`Probes`, settings ``config.eval.probes``) writes it to
probes.json (every draw's AP), probes.md and the bar chart probes_table1.png
(`mopoe_jax.evaluation.probes_markdown`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence
import warnings

from absl import logging
import ml_collections
import numpy as np

# scikit-learn and SciPy are imported in the functions that use them: a run that trains, or
# evaluates without probes, does not load them (with Matplotlib, about 2-3 CPU-s per start).
from mopoe_jax.data.labels import PROBE_LABELS
from mopoe_jax.evaluation.common import (
  HEADLINE_LABEL,
  MIN_CLASS_EXAMPLES,
  Context,
  Evaluator,
  Result,
  class_problem,
  encode_split,
  fmt,
  targets_note,
  write_json,
)
from mopoe_jax.evaluation.probes_markdown import (
  CHART_FILE,
  INTERVAL_LEVEL,
  probes_markdown,
  write_chart,
)
from mopoe_jax.platform import paths

METRICS = ("standard", "legacy")  # the keys of the two metrics in probes.json
_ONE_CLASS = "n/a (one class in the draw)"
_METRIC_NOTES = {
  "standard": "average_precision_score(y_true, predicted probability)",
  "legacy": (
    "LEGACY: average_precision_score(hard 0/1 predictions, y_true), the reference "
    "code's swapped arguments; not an average precision of the probe"
  ),
}


# ------------------------------------------------------------------------------------------------
# The two metrics and one probe.


def legacy_average_precision(y_true: np.ndarray, hard_predictions: np.ndarray) -> float:
  """The reference's probe number: ``average_precision_score(hard_predictions, y_true)``.

  The reference passed the 0/1 predictions of the logistic regression as ``y_true`` and the
  ground truth as ``y_score`` (arguments swapped). Reported for comparison with its published
  numbers only, labelled LEGACY; it is not an average precision of the probe. With no positive
  prediction it is 0.
  """
  from sklearn import metrics as sklearn_metrics  # pylint: disable=g-import-not-at-top

  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # "No positive class found in y_true"
    return float(
      sklearn_metrics.average_precision_score(
        np.asarray(hard_predictions), np.asarray(y_true, np.float64)
      )
    )


def fit_probe(
  train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, max_iter: int = 1000
) -> tuple[np.ndarray, np.ndarray, bool]:
  """sklearn LogisticRegression (lbfgs) on [n, D] features and 0/1 labels [n].

  Returns (P(positive) [N_test], hard 0/1 predictions [N_test], converged).
  """
  from sklearn import exceptions as sklearn_exceptions  # pylint: disable=g-import-not-at-top
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top

  probe = linear_model.LogisticRegression(solver="lbfgs", max_iter=max_iter)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", sklearn_exceptions.ConvergenceWarning)
    probe.fit(train_x, train_y)
  converged = not any(issubclass(w.category, sklearn_exceptions.ConvergenceWarning) for w in caught)
  return probe.predict_proba(test_x)[:, 1], probe.predict(test_x), converged


# ------------------------------------------------------------------------------------------------
# Shared draws.


def probe_draws(num_studies: int, num_train_examples: int, repeats: int, seed: int) -> np.ndarray:
  """The training draws that every subset shares: int64 [repeats, num_train_examples].

  Draw r holds ``num_train_examples`` positions in [0, num_studies) drawn uniformly WITH
  replacement from ``np.random.default_rng([seed, r])``: the same seed gives the same draws, and
  draw r does not depend on ``repeats``. The positions are studies of the whole train split (as
  the reference draws from its whole train split), so the studies a run must encode are the
  union of the draws (at most repeats x num_train_examples), not the split.
  """
  if num_studies < 1 or num_train_examples < 1 or repeats < 1:
    raise ValueError(
      f"The probes need at least one study, one example and one repeat; got "
      f"{num_studies} studies, eval.probes.train_examples={num_train_examples}, "
      f"eval.probes.repeats={repeats}."
    )
  return np.stack(
    [
      np.random.default_rng([seed, r]).integers(0, num_studies, size=num_train_examples)
      for r in range(repeats)
    ]
  ).astype(np.int64)


def subset_rows(draw: np.ndarray, valid: np.ndarray) -> list[np.ndarray]:
  """Each subset's training rows of one shared draw: the draw restricted to its valid studies.

  Subset k trains on ``draw[valid[draw, k]]``: every study drawn is used by every subset that is
  valid for it, as often as it was drawn, and by no other. Where every study is complete (the
  paper's data, ``data.require_complete``) all subsets train on exactly the same
  ``len(draw)`` studies; otherwise a subset trains on the drawn studies that have its
  modalities, fewer for larger subsets (the counts are in probes.json, ``num_examples``).

  Args:
    draw: int [n] rows of the encoded train studies.
    valid: bool [N, K] subset k valid for row i.

  Returns:
    K int arrays, the rows of each subset in draw order.
  """
  draw = np.asarray(draw)
  return [draw[valid[draw, k]] for k in range(valid.shape[1])]


# ------------------------------------------------------------------------------------------------
# Summaries over draws.


def mean_interval(values: Sequence[float], level: float = INTERVAL_LEVEL) -> dict:
  """Mean, standard deviation and the t-interval of the mean of per-draw values.

  The table reports the mean over R draws; the question the interval answers is how far that
  mean may lie from the mean over infinitely many draws (same model, same test split). The
  t-interval, mean ± t_{(1+level)/2, R-1} · s / sqrt(R) with s the sample standard deviation
  (ddof=1), uses the spread of all draws and is exact for normally distributed per-draw values
  (an AP over hundreds of test studies from a probe fit on 500 draws is close to normal). A
  percentile interval over R = 10 draws would be set by the two extreme draws and describes one
  draw, not the mean. What it leaves out: the test split's own sampling error and the
  randomness of training the model; it is the probe-draw part of the uncertainty only.

  Args:
    values: per-draw values (None entries are left out).
    level: the interval's coverage.

  Returns:
    {"mean", "std", "interval": [low, high], "n"}; std and interval are None with fewer than two
    values, everything but n is None with none.
  """
  x = np.asarray([v for v in values if v is not None], np.float64)
  n = int(x.size)
  if n == 0:
    return {"mean": None, "std": None, "interval": None, "n": 0}
  mean = float(x.mean())
  if n < 2:
    return {"mean": mean, "std": None, "interval": None, "n": n}
  std = float(x.std(ddof=1))
  from scipy import stats  # pylint: disable=g-import-not-at-top

  half = float(stats.t.ppf((1.0 + level) / 2.0, df=n - 1)) * std / math.sqrt(n)
  return {"mean": mean, "std": std, "interval": [mean - half, mean + half], "n": n}


def paired_difference(
  a: Sequence[float | None], b: Sequence[float | None], level: float = INTERVAL_LEVEL
) -> dict:
  """a - b draw by draw (draws where either is None are left out), summarised by
  `mean_interval`: the shared draws make the difference far tighter than the two intervals."""
  if len(a) != len(b):
    raise ValueError(f"Paired values need the same draws; got {len(a)} and {len(b)}.")
  diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None]
  return {**mean_interval(diffs, level), "draws": diffs}


@dataclasses.dataclass
class PairedDifference:
  """The full set minus the best single modality, paired over the shared draws."""

  full: str  # the full set's subset name
  best_single: str  # the single modality with the largest mean
  mean: float | None
  std: float | None
  interval: list[float] | None  # [low, high]
  n: int  # draws with both values
  draws: list[float]  # the per-draw differences


def full_minus_best_single(
  draws: dict, label: str, subset_names: Sequence[str]
) -> PairedDifference | None:
  """The full set minus the single modality with the best mean, paired over the shared draws.

  ``draws``: {subset: {label: [value or None per draw]}}. The best single modality is chosen on
  the same draws (its mean is the largest of the singletons'), which favours it slightly: the
  difference is, if anything, understated. None when there is no singleton or no value.
  """
  full = max(subset_names, key=lambda s: len(s.split("+")))
  singles = [s for s in subset_names if "+" not in s]
  if "+" not in full:
    return None
  means = {s: mean_interval(draws[s][label])["mean"] for s in singles}
  means = {s: m for s, m in means.items() if m is not None}
  if not means or mean_interval(draws[full][label])["mean"] is None:
    return None
  best = max(means, key=means.get)
  return PairedDifference(
    full=full, best_single=best, **paired_difference(draws[full][label], draws[best][label])
  )


# ------------------------------------------------------------------------------------------------
# Inputs, settings and the result.


@dataclasses.dataclass(frozen=True)
class ProbeInputs:
  """One split's encoded studies as the probes read them."""

  codes: np.ndarray  # [K, N, D] subset posterior means
  valid: np.ndarray  # bool [N, K]: subset k valid for study i (all its modalities available)
  targets: np.ndarray  # int [N, L] 0/1 targets of the labels (`ProbeSettings.label_names`)


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
  """How `linear_probes` draws, fits and checks (``config.eval.probes``, `from_config`)."""

  label_names: Sequence[str] = PROBE_LABELS
  num_train_examples: int = 500  # per draw (not read when the draws are given)
  repeats: int = 10  # draws (not read when the draws are given)
  seed: int = 0  # of the draws (`probe_draws`)
  max_iter: int = 1000  # of each logistic regression (lbfgs)
  min_test_examples: int = 20  # fewer valid test studies for a subset is an error
  train_split: str = "train"  # the splits' names, for messages and the settings record
  test_split: str = "test"
  finding_rule: str = "any_positive"  # recorded with the settings (the targets are made)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> ProbeSettings:
    """``config.eval.probes``, ``eval.seed`` and the splits and Finding rule of ``config.data``."""
    p = config.eval.probes
    return cls(
      num_train_examples=p.train_examples,
      repeats=p.repeats,
      seed=config.eval.seed,
      max_iter=p.max_iter,
      min_test_examples=p.min_test_examples,
      train_split=config.data.train_split,
      test_split=config.data.test_split,
      finding_rule=config.data.finding_rule,
    )


@dataclasses.dataclass
class MetricTable:
  """One metric over the draws, per subset and label: {subset: {label: value}} each."""

  subsets: dict  # the mean over the draws (None: not scored, see `ProbesResult.skipped`)
  std: dict  # the standard deviation (ddof 1; None with fewer than two draws)
  interval: dict  # the t-interval of the mean, [low, high] (`mean_interval`) or None
  draws: dict  # every draw's value ([value or None per draw])


@dataclasses.dataclass
class ProbeCounts:
  """How many studies the probes used."""

  train: dict  # {subset: [training rows per draw]}
  test: dict  # {subset: scored test studies}
  train_studies: int  # distinct train studies drawn


@dataclasses.dataclass
class ProbeRecord:
  """The settings as probes.json records them (with their explanations)."""

  metric: str
  legacy: str
  targets: str
  finding_rule: str
  representation: str
  train_examples: int
  repeats: int
  seed: int
  draws: str
  interval: str
  max_iter: int
  not_converged: int  # fits that stopped at max_iter
  random: str
  train_split: str
  test_split: str


@dataclasses.dataclass
class ProbesResult(Result):
  """`linear_probes`' result; ``to_json()`` is probes.json (and results.json's "probes").

  The standard metric's table is inline (``subsets``, ``std``, ``interval``, ``draws``, as
  probes.json has it; `standard` gives it as a `MetricTable`), the LEGACY metric's in
  ``legacy``.
  """

  random: dict  # {label: prevalence in the whole test split}
  skipped: dict  # {subset: {label: why it has no value, or why draws were left out}}
  random_per_subset: dict  # {subset: {label: prevalence among its scored test studies}}
  num_examples: ProbeCounts
  subsets: dict  # standard metric: {subset: {label: mean AP or None}}
  std: dict
  interval: dict
  draws: dict
  legacy: MetricTable  # the reference's number (`legacy_average_precision`)
  difference: dict  # {"standard" | "legacy": {label: PairedDifference or None}}
  settings: ProbeRecord

  @property
  def standard(self) -> MetricTable:
    return MetricTable(self.subsets, self.std, self.interval, self.draws)


@dataclasses.dataclass
class _SubsetFits:
  """One subset's probes (`_fit_subset`)."""

  values: dict  # {"standard" | "legacy": {label: [value or None per draw]}}
  skipped: dict  # {label: why}
  prevalence: dict  # {label: share of positives among the test rows}
  not_converged: int


# ------------------------------------------------------------------------------------------------
# The probes.


def linear_probes(
  train: ProbeInputs,
  test: ProbeInputs,
  subset_names: Sequence[str],
  settings: ProbeSettings = ProbeSettings(),
  *,
  draws: np.ndarray | None = None,
) -> ProbesResult:
  """Linear probes of the latent representation of every subset (the paper's Table 1).

  For draw r, subset k and label l: a logistic regression (sklearn, lbfgs, ``max_iter``) is fit
  on the rows `subset_rows` gives k of the shared draw r, and scored on every test study for
  which k is valid, by ``average_precision_score(y_true, P(positive))`` and by the reference's
  LEGACY number. The draws are ``draws`` or, if None, `probe_draws` over the train rows
  (``settings.num_train_examples``, ``repeats``, ``seed``). The random baseline is the label's
  prevalence in the test split (the AP of a random score).

  A draw whose rows of k have one class only for l cannot train a probe: it is left out (its
  value is None) and counted in ``skipped``; a label whose every draw has one class is reported
  as null with the reason "n/a (one class in the draw)". A label with fewer than 2 positive or
  negative test studies is reported as null with its counts.

  Args:
    train, test: the encoded train studies and test split (K subsets, targets of
      ``settings.label_names``).
    subset_names: K names ('frontal', ..., 'frontal+lateral+text').
    settings: see `ProbeSettings`.
    draws: int [R, n] rows of ``train`` (None: drawn here).

  Returns:
    A `ProbesResult`.

  Raises:
    ValueError: a subset with no valid study in any draw, fewer than ``min_test_examples``
      valid test studies, or fewer than 2 positive or negative test studies of "Finding".
  """
  label_names = settings.label_names
  num_subsets = len(subset_names)
  if train.codes.shape[0] != num_subsets or test.codes.shape[0] != num_subsets:
    raise ValueError(
      f"codes must be [K={num_subsets}, N, D]; got train {train.codes.shape}, "
      f"test {test.codes.shape}."
    )
  if test.targets.shape[1] != len(label_names):
    raise ValueError(
      f"test targets have {test.targets.shape[1]} columns for {len(label_names)} labels."
    )
  if draws is None:
    draws = probe_draws(
      train.codes.shape[1], settings.num_train_examples, settings.repeats, settings.seed
    )
  draws = np.asarray(draws)
  rows = [subset_rows(draw, train.valid) for draw in draws]  # [R][K]
  values = {m: {} for m in METRICS}  # metric -> subset -> label -> [value or None per draw]
  skipped, random_per_subset = {}, {}
  counts = ProbeCounts(train={}, test={}, train_studies=int(np.unique(draws).size))
  not_converged, start = 0, time.perf_counter()
  for k, name in enumerate(subset_names):
    test_rows = np.flatnonzero(test.valid[:, k])
    train_counts = [int(r[k].size) for r in rows]
    _check_subset(name, train_counts, test_rows, test.targets, settings)
    fitted = _fit_subset(
      [r[k] for r in rows],
      train.codes[k],
      train.targets,
      test.codes[k, test_rows],
      test.targets[test_rows],
      label_names,
      max_iter=settings.max_iter,
      test_split=settings.test_split,
    )
    for m in METRICS:
      values[m][name] = fitted.values[m]
    not_converged += fitted.not_converged
    skipped[name] = fitted.skipped
    random_per_subset[name] = fitted.prevalence
    counts.train[name] = train_counts
    counts.test[name] = int(test_rows.size)
    headline = mean_interval(values["standard"][name].get(HEADLINE_LABEL, []))
    logging.info(
      "Probes of %s (%d/%d subsets, %.0f s): %s AP %s.",
      name,
      k + 1,
      num_subsets,
      time.perf_counter() - start,
      HEADLINE_LABEL,
      fmt(headline["mean"], headline["std"]),
    )
  if not_converged:
    logging.warning(
      "%d probe fits did not converge within max_iter=%d.", not_converged, settings.max_iter
    )
  standard, legacy = (summarise(values[m]) for m in METRICS)
  return ProbesResult(
    random={l: float(test.targets[:, j].mean()) for j, l in enumerate(label_names)},
    skipped=skipped,
    random_per_subset=random_per_subset,
    num_examples=counts,
    subsets=standard.subsets,
    std=standard.std,
    interval=standard.interval,
    draws=standard.draws,
    legacy=legacy,
    difference={
      m: {l: full_minus_best_single(values[m], l, subset_names) for l in label_names}
      for m in METRICS
    },
    settings=_record(settings, draws, not_converged),
  )


def _record(settings: ProbeSettings, draws: np.ndarray, not_converged: int) -> ProbeRecord:
  return ProbeRecord(
    metric=_METRIC_NOTES["standard"],
    legacy=_METRIC_NOTES["legacy"],
    targets=targets_note(settings.finding_rule),
    finding_rule=settings.finding_rule,
    representation="posterior mean of q_subset",
    train_examples=int(draws.shape[1]),
    repeats=int(draws.shape[0]),
    seed=settings.seed,
    draws=(
      "shared by all subsets: draw r takes train_examples studies of the whole "
      f"{settings.train_split} split with replacement (numpy default_rng([seed, r])), and "
      "every subset trains on the drawn studies for which it is valid"
    ),
    interval=(
      f"{INTERVAL_LEVEL:.0%} t-interval of the mean over the draws: mean ± "
      "t_{0.975, R-1} * std / sqrt(R), std with ddof=1"
    ),
    max_iter=settings.max_iter,
    not_converged=not_converged,
    random=f"prevalence of the label in the whole {settings.test_split} split",
    train_split=settings.train_split,
    test_split=settings.test_split,
  )


def _check_subset(
  name: str,
  counts: list[int],
  test_rows: np.ndarray,
  test_targets: np.ndarray,
  settings: ProbeSettings,
) -> None:
  """Raises ValueError when subset ``name`` cannot be probed (see `linear_probes`)."""
  if max(counts) == 0:
    raise ValueError(
      f"No drawn {settings.train_split!r} study has all modalities of subset {name!r}; "
      "the probes need some (check data.require_complete and the dataset's "
      "missing-modality rates, or raise eval.probes.train_examples)."
    )
  if test_rows.size < settings.min_test_examples:
    raise ValueError(
      f"The {settings.test_split!r} split has {test_rows.size} studies with all modalities of "
      f"subset {name!r}, fewer than the {settings.min_test_examples} the probes need "
      "(eval.probes.min_test_examples); evaluate on a larger split."
    )
  if HEADLINE_LABEL in settings.label_names:
    y = test_targets[test_rows, list(settings.label_names).index(HEADLINE_LABEL)]
    if class_problem(y, settings.test_split):
      raise ValueError(
        f"The {settings.test_split!r} split has {int(y.sum())} positive and "
        f"{int(y.size - y.sum())} negative studies of {HEADLINE_LABEL!r} for subset {name!r}; "
        f"the probes need at least {MIN_CLASS_EXAMPLES} of each. Evaluate on a larger split."
      )


def _fit_subset(
  draw_rows: list[np.ndarray],
  train_codes: np.ndarray,
  train_targets: np.ndarray,
  test_codes: np.ndarray,
  test_targets: np.ndarray,
  label_names: Sequence[str],
  *,
  max_iter: int,
  test_split: str,
) -> _SubsetFits:
  """One subset's probes: per label, a fit on each draw's rows, scored on the test rows."""
  from sklearn import metrics as sklearn_metrics  # pylint: disable=g-import-not-at-top

  repeats = len(draw_rows)
  out = _SubsetFits(
    values={"standard": {}, "legacy": {}}, skipped={}, prevalence={}, not_converged=0
  )
  for j, label in enumerate(label_names):
    y_test = test_targets[:, j]
    out.prevalence[label] = float(y_test.mean())
    problem = class_problem(y_test, test_split)
    standard, legacy = [None] * repeats, [None] * repeats
    for r in range(repeats if problem is None else 0):
      y_train = train_targets[draw_rows[r], j]
      if y_train.size == 0 or y_train.min() == y_train.max():
        continue
      prob, hard, converged = fit_probe(
        train_codes[draw_rows[r]], y_train, test_codes, max_iter=max_iter
      )
      out.not_converged += not converged
      standard[r] = float(sklearn_metrics.average_precision_score(y_test, prob))
      legacy[r] = legacy_average_precision(y_test, hard)
    fitted = sum(v is not None for v in standard)
    if problem is None and fitted == 0:
      problem = _ONE_CLASS
    elif problem is None and fitted < repeats:
      out.skipped[label] = f"{repeats - fitted} of {repeats} draws had one class and were left out"
    if problem is not None:
      out.skipped[label] = problem
    out.values["standard"][label], out.values["legacy"][label] = standard, legacy
  return out


def summarise(values: dict) -> MetricTable:
  """One metric's means, standard deviations and intervals over the draws (`mean_interval`),
  from ``values``: {subset: {label: [value or None per draw]}}."""
  summary = {
    n: {l: mean_interval(v) for l, v in per_label.items()} for n, per_label in values.items()
  }

  def field(key):
    return {n: {l: s[key] for l, s in per_label.items()} for n, per_label in summary.items()}

  return MetricTable(
    subsets=field("mean"), std=field("std"), interval=field("interval"), draws=values
  )


# ------------------------------------------------------------------------------------------------
# The evaluator.


class Probes(Evaluator):
  """Probes of every subset on the test split; writes probes.json, probes.md and the chart."""

  name = "probes"

  def default_config(self) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.train_examples = 500  # per draw, with replacement from the train split
    c.repeats = 10  # draws shared by all subsets; only the drawn studies are encoded
    c.max_iter = 1000  # of each logistic regression (lbfgs)
    c.min_test_examples = 20  # fewer valid test studies for a subset is an error
    return c

  def check(self, config: ml_collections.ConfigDict) -> None:
    p = config.eval.probes
    for field in ("train_examples", "repeats", "max_iter"):
      if p[field] < 1:
        raise ValueError(f"config.eval.probes.{field} must be >= 1, got {p[field]}.")
    if p.min_test_examples < 0:
      raise ValueError(
        f"config.eval.probes.min_test_examples must be >= 0, got {p.min_test_examples}."
      )

  def run(self, ctx: Context) -> ProbesResult:
    settings = ProbeSettings.from_config(ctx.config)
    test = ctx.test()
    split = settings.train_split
    draws = probe_draws(
      ctx.data.num_examples(split), settings.num_train_examples, settings.repeats, settings.seed
    )
    studies = np.unique(draws)
    logging.info(
      "Probe draws: %d x %d studies of %s, %d distinct; encoding those.",
      draws.shape[0],
      draws.shape[1],
      split,
      studies.size,
    )
    train = encode_split(
      ctx.model,
      ctx.variables,
      ctx.data,
      split,
      batch_size=ctx.config.eval.batch_size,
      finding_rule=settings.finding_rule,
      indices=studies,
      keep_logvar=False,
    )
    probes = linear_probes(
      ProbeInputs(train.mu_k, train.valid, train.targets),
      ProbeInputs(test.mu_k, test.valid, test.targets),
      ctx.subset_names,
      settings,
      draws=np.searchsorted(studies, draws),
    )
    write_json(paths.join(ctx.eval_dir, "probes.json"), probes.to_json())
    write_chart(probes, paths.join(ctx.eval_dir, CHART_FILE))
    paths.write_text(paths.join(ctx.eval_dir, "probes.md"), probes_markdown(probes))
    return probes

  def summary_scalars(self, result: ProbesResult) -> dict[str, float | None]:
    """Every subset's mean AP of label Finding, and the full set minus the best single."""
    scalars = {
      f"eval_probe_ap/{name}/{HEADLINE_LABEL}": scores.get(HEADLINE_LABEL)
      for name, scores in result.subsets.items()
    }
    difference = result.difference.get("standard", {}).get(HEADLINE_LABEL)
    if difference:
      scalars[f"eval_probe_ap/full_minus_best_single/{HEADLINE_LABEL}"] = difference.mean
    return scalars

  def markdown(self, result: ProbesResult, settings: dict) -> str:
    """The report.md section: the headline tables, the chart and links to the details."""
    del settings
    return "\n".join(
      [
        probes_markdown(result, level=2),
        "Every draw's AP, skip reasons and settings: [probes.json](probes.json); "
        "the same tables: [probes.md](probes.md); the chart: "
        f"[{CHART_FILE}]({CHART_FILE}).",
        "",
      ]
    )
