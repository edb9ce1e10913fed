"""Latent linear probes (SPEC §7; the paper's Table 1).

For every subset, the posterior MEAN of every study for which the subset is valid (all its
modalities available); a logistic regression per label trained on ``eval.probe_train_examples``
train studies drawn with replacement, scored by average precision of the predicted
probabilities on the whole test split (`linear_probes`). Writes probes.json and probes.md.
"""

from __future__ import annotations

import os
import time
from typing import Sequence
import warnings

from absl import logging
import numpy as np
from sklearn import exceptions as sklearn_exceptions
from sklearn import linear_model
from sklearn import metrics as sklearn_metrics

from mopoe_jax.evaluators.common import (HEADLINE_LABEL, LABEL_NAMES, MIN_CLASS_EXAMPLES,
                                         TARGETS_NOTE, Context, class_problem, encode_split, fmt,
                                         table, write_json)

_ONE_CLASS = "n/a (one class in the draw)"


def legacy_average_precision(y_true: np.ndarray, hard_predictions: np.ndarray) -> float:
  """The reference's probe number: ``average_precision_score(hard_predictions, y_true)``.

  The reference passed the 0/1 predictions of the logistic regression as ``y_true`` and the
  ground truth as ``y_score`` (arguments swapped). Offered for comparison with its published
  numbers only (``eval.probe_legacy_metric``); it is not an average precision of the probe.
  With no positive prediction it is 0.
  """
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # "No positive class found in y_true"
    return float(sklearn_metrics.average_precision_score(
        np.asarray(hard_predictions), np.asarray(y_true, np.float64)))


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *,
              max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray, bool]:
  """sklearn LogisticRegression (lbfgs) on [n, D] features and 0/1 labels [n].

  Returns (P(positive) [N_test], hard 0/1 predictions [N_test], converged).
  """
  probe = linear_model.LogisticRegression(solver="lbfgs", max_iter=max_iter)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", sklearn_exceptions.ConvergenceWarning)
    probe.fit(train_x, train_y)
  converged = not any(issubclass(w.category, sklearn_exceptions.ConvergenceWarning)
                      for w in caught)
  return probe.predict_proba(test_x)[:, 1], probe.predict(test_x), converged


def linear_probes(train_codes: np.ndarray, train_valid: np.ndarray, train_targets: np.ndarray,
                  test_codes: np.ndarray, test_valid: np.ndarray, test_targets: np.ndarray,
                  subset_names: Sequence[str], *, label_names: Sequence[str] = LABEL_NAMES,
                  num_train_examples: int = 500, repeats: int = 1, seed: int = 0,
                  max_iter: int = 1000, legacy: bool = False, min_test_examples: int = 20,
                  train_split: str = "train", test_split: str = "test") -> dict:
  """Linear probes of the latent representation of every subset (the paper's Table 1).

  For subset k and label l: a logistic regression (sklearn, lbfgs, ``max_iter``) is fit on
  ``num_train_examples`` studies drawn with replacement from the train studies for which k is
  valid (one draw per repeat, seeded by (seed, k, repeat), shared by all labels), and scored on
  every test study for which k is valid by ``average_precision_score(y_true, P(positive))``.
  Targets (`classifiers.label_targets`): positive = label value 1.0; negative = 0.0, -1.0
  (uncertain) and NaN (not mentioned); "Finding" = any of the 13 pathologies positive. The
  random baseline is the label's prevalence in the test split (the AP of a random score).

  A draw with one class only cannot train a probe: it is skipped, and a label whose every draw
  has one class is reported as null with the reason "n/a (one class in the draw)". A label with
  fewer than 2 positive or negative test studies is reported as null with its counts.

  Args:
    train_codes, test_codes: [K, N, D] subset posterior means of the train pool / test split.
    train_valid, test_valid: bool [N, K].
    train_targets, test_targets: int [N, L] 0/1 targets of ``label_names``.
    subset_names: K names ('frontal', ..., 'frontal+lateral+text').

  Returns:
    {"subsets": {subset: {label: mean AP or None}}, "random": {label: prevalence},
     "std": {subset: {label: std over repeats}}, "skipped": {subset: {label: reason}},
     "random_per_subset": {subset: {label: prevalence among its scored test studies}},
     "num_examples": {"train_pool": {subset: n}, "test": {subset: n}},
     "legacy": {subset: {label: mean}} (only with ``legacy``), "settings": {...}}

  Raises:
    ValueError: a subset with no valid train study, fewer than ``min_test_examples`` valid test
      studies, or fewer than 2 positive or negative test studies of "Finding".
  """
  num_subsets = len(subset_names)
  if train_codes.shape[0] != num_subsets or test_codes.shape[0] != num_subsets:
    raise ValueError(f"codes must be [K={num_subsets}, N, D]; got train {train_codes.shape}, "
                     f"test {test_codes.shape}.")
  if test_targets.shape[1] != len(label_names):
    raise ValueError(f"test_targets has {test_targets.shape[1]} columns for "
                     f"{len(label_names)} labels.")
  result = {"subsets": {}, "random": {}, "std": {}, "skipped": {}, "random_per_subset": {},
            "num_examples": {"train_pool": {}, "test": {}}}
  if legacy:
    result["legacy"] = {}
  result["random"] = {l: float(test_targets[:, j].mean()) for j, l in enumerate(label_names)}
  not_converged, start = 0, time.perf_counter()
  for k, name in enumerate(subset_names):
    pool = np.flatnonzero(train_valid[:, k])
    test_rows = np.flatnonzero(test_valid[:, k])
    if pool.size == 0:
      raise ValueError(f"The {train_split!r} split has no study with all modalities of subset "
                       f"{name!r}; the probes need some (check data.require_complete and the "
                       "dataset's missing-modality rates).")
    if test_rows.size < min_test_examples:
      raise ValueError(
          f"The {test_split!r} split has {test_rows.size} studies with all modalities of subset "
          f"{name!r}, fewer than the {min_test_examples} the probes need "
          "(eval.probe_min_test_examples); evaluate on a larger split.")
    if HEADLINE_LABEL in label_names:
      y = test_targets[test_rows, list(label_names).index(HEADLINE_LABEL)]
      if class_problem(y, test_split):
        raise ValueError(
            f"The {test_split!r} split has {int(y.sum())} positive and {int(y.size - y.sum())} "
            f"negative studies of {HEADLINE_LABEL!r} for subset {name!r}; the probes need at "
            f"least {MIN_CLASS_EXAMPLES} of each. Evaluate on a larger split.")
    draws = [np.random.default_rng([seed, k, r]).choice(pool, size=num_train_examples)
             for r in range(repeats)]
    scores, stds, skipped, legacy_scores, prevalence = {}, {}, {}, {}, {}
    for j, label in enumerate(label_names):
      y_test = test_targets[test_rows, j]
      prevalence[label] = float(y_test.mean())
      problem = class_problem(y_test, test_split)
      aps, legacy_aps = [], []
      for draw in draws if problem is None else []:
        y_train = train_targets[draw, j]
        if y_train.min() == y_train.max():
          continue
        prob, hard, converged = fit_probe(train_codes[k, draw], y_train,
                                          test_codes[k, test_rows], max_iter=max_iter)
        not_converged += not converged
        aps.append(sklearn_metrics.average_precision_score(y_test, prob))
        legacy_aps.append(legacy_average_precision(y_test, hard))
      if problem is None and not aps:
        problem = _ONE_CLASS
      elif problem is None and len(aps) < repeats:
        skipped[label] = f"{repeats - len(aps)} of {repeats} draws had one class and were skipped"
      if problem is not None:
        skipped[label] = problem
      scores[label] = float(np.mean(aps)) if aps else None
      stds[label] = float(np.std(aps)) if aps else None
      legacy_scores[label] = float(np.mean(legacy_aps)) if legacy_aps else None
    result["subsets"][name] = scores
    result["std"][name] = stds
    result["skipped"][name] = skipped
    result["random_per_subset"][name] = prevalence
    result["num_examples"]["train_pool"][name] = int(pool.size)
    result["num_examples"]["test"][name] = int(test_rows.size)
    if legacy:
      result["legacy"][name] = legacy_scores
    logging.info("Probes of %s (%d/%d subsets, %.0f s): %s AP %s.", name, k + 1, num_subsets,
                 time.perf_counter() - start, HEADLINE_LABEL,
                 fmt(scores.get(HEADLINE_LABEL)))
  if not_converged:
    logging.warning("%d probe fits did not converge within max_iter=%d.", not_converged, max_iter)
  result["settings"] = {
      "metric": "average_precision_score(y_true, predicted probability)",
      "targets": TARGETS_NOTE, "representation": "posterior mean of q_subset",
      "train_examples": num_train_examples, "repeats": repeats, "seed": seed,
      "max_iter": max_iter, "not_converged": not_converged,
      "random": f"prevalence of the label in the whole {test_split} split",
      "train_split": train_split, "test_split": test_split}
  if legacy:
    result["settings"]["legacy"] = ("LEGACY: average_precision_score(hard 0/1 predictions, "
                                    "y_true), the reference's swapped arguments")
  return result


def probes_markdown(probes: dict, method: str = "MoPoE (this model)", level: int = 1) -> str:
  """The probe tables: the paper's Table 1 (label Finding) and every label, as Markdown."""
  names = list(probes["subsets"])
  labels = list(probes["random"])
  repeats = probes["settings"]["repeats"]

  def cell(source, name, label):
    value = probes[source][name][label]
    if value is None:
      return probes["skipped"][name].get(label, "n/a")
    return fmt(value, probes["std"][name][label] if source == "subsets" and repeats > 1
                else None)

  h = "#" * level
  out = [f"{h} Latent linear probes: average precision, label {HEADLINE_LABEL}, "
         f"{probes['settings']['test_split']} split",
         "",
         table(["method"] + names,
                [[method] + [cell("subsets", n, HEADLINE_LABEL) for n in names],
                 ["random"] + [fmt(probes["random_per_subset"][n][HEADLINE_LABEL])
                               for n in names]]),
         "",
         f"Logistic regression on the posterior mean of each subset, "
         f"{probes['settings']['train_examples']} train studies drawn with replacement"
         + (f", mean ± std over {repeats} draws" if repeats > 1 else ", one draw")
         + f". Targets: {TARGETS_NOTE}. The random row is each column's prevalence among its "
         f"scored test studies; over the whole split it is "
         f"{fmt(probes['random'][HEADLINE_LABEL])}.",
         "",
         f"{h} Every label",
         "",
         table(["label"] + names + ["random"],
                [[l] + [cell("subsets", n, l) for n in names] + [fmt(probes["random"][l])]
                 for l in labels])]
  if "legacy" in probes:
    out += ["", f"{h} LEGACY metric (not an average precision of the probe)", "",
            probes["settings"]["legacy"] + "; for comparison with the reference code only.", "",
            table(["label"] + names,
                   [[l] + [cell("legacy", n, l) for n in names] for l in labels])]
  return "\n".join(out) + "\n"


def run(ctx: Context) -> dict:
  """Probes of every subset on the test split; writes probes.json and probes.md."""
  ev, data_config = ctx.config.eval, ctx.config.data
  test = ctx.test()
  train = encode_split(ctx.model, ctx.variables, ctx.data, data_config.train_split,
                       batch_size=ev.batch_size, max_examples=ev.probe_max_train_pool,
                       keep_logvar=False)
  probes = linear_probes(
      train.mu_k, train.valid, train.targets, test.mu_k, test.valid, test.targets,
      ctx.subset_names, num_train_examples=ev.probe_train_examples, repeats=ev.probe_repeats,
      seed=ev.seed, max_iter=ev.probe_max_iter, legacy=ev.probe_legacy_metric,
      min_test_examples=ev.probe_min_test_examples, train_split=data_config.train_split,
      test_split=data_config.test_split)
  write_json(os.path.join(ctx.eval_dir, "probes.json"), probes)
  with open(os.path.join(ctx.eval_dir, "probes.md"), "w") as f:
    f.write(probes_markdown(probes))
  return probes


def markdown(result: dict, settings: dict) -> str:
  """The report.md section: the headline tables and links to the details."""
  del settings
  return "\n".join([probes_markdown(result, level=2),
                    "Per-label details, std and skip reasons: [probes.json](probes.json), "
                    "[probes.md](probes.md).", ""])
