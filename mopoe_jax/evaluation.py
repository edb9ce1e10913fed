"""Evaluation of a trained MoPoE model (SPEC §7): latent probes, generation, coherence, likelihood.

`run_evaluation` runs what ``config.eval`` enables and writes, under ``<workdir>/eval/``:
  results.json        everything below in one JSON document
  report.md           a readable summary with the tables and links to the PNGs
  probes.json/.md     latent linear probes (the paper's Table 1 and the full per-label table)
  generation/         PNG grids and generated reports: from_<subset>.png/.md, prior.png/.md

1. Latent probes. For every subset, the posterior MEAN of every study for which the subset is
   valid (all its modalities available); a logistic regression per label trained on
   ``probe_train_examples`` train studies drawn with replacement, scored by average precision of
   the predicted probabilities on the whole test split (`linear_probes`).
2. Generation. For every subset, all modalities decoded from z of q_subset (a sample or the mean,
   ``eval.generation_latent``); images are the Laplace locations clipped to [0, 1], reports the
   most likely word at each position (argmax of the logits). Unconditional samples decode
   z ~ N(0, I).
3. Coherence. Classifiers trained on real data (`mopoe_jax.classifiers`) label the generated
   modalities; their average precision against the SOURCE study's labels, per subset, generated
   modality and label, on the test split; the same classifiers on the real test data give the
   upper reference. On datasets with ground-truth attributes (synthetic_cxr) the image
   classifiers' attribute head is correlated with the source's attributes.
4. Likelihood. Importance-sampled log p(x) with q_subset as the proposal (`likelihood`).

Every pass over a split runs on this process alone (the whole split, not a process shard), in
the split's fixed order; nothing here needs an accelerator.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Iterator, Sequence
import warnings

from absl import logging
from clu import metric_writers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import special
from sklearn import exceptions as sklearn_exceptions
from sklearn import linear_model
from sklearn import metrics as sklearn_metrics
import tensorflow_datasets as tfds

from input_pipeline import pipeline
from input_pipeline import text as text_lib
from mopoe_jax import checkpointing
from mopoe_jax import classifiers as classifiers_lib
from mopoe_jax import fusion
from mopoe_jax import objective
from mopoe_jax import subsets as subsets_lib
from mopoe_jax import train as train_lib
from mopoe_jax import visualize
from mopoe_jax.model import DATA_MODALITIES, MoPoE, inputs_from_batch, is_text

EVAL_DIR = "eval"
GENERATION_DIR = "generation"
LATENTS = ("sample", "mean")
LABEL_NAMES = classifiers_lib.LABEL_NAMES
HEADLINE_LABEL = "Finding"
MIN_CLASS_EXAMPLES = 2  # positives and negatives a label needs in the scored split
TARGETS_NOTE = ("positive = label value 1.0; negative = 0.0, -1.0 (uncertain) and NaN (not "
                "mentioned); Finding = any of the 13 pathologies positive")
_LOG_2PI = math.log(2.0 * math.pi)
_ONE_CLASS = "n/a (one class in the draw)"


# ------------------------------------------------------------------------------------------------
# Jitted model passes (compiled once per model and batch shape).


@functools.partial(jax.jit, static_argnums=0)
def _posteriors(model: MoPoE, variables, batch: dict):
  """batch: modalities + 'available' -> (mu_k, logvar_k [K, B, D], valid bool [B, K])."""
  inputs, available = inputs_from_batch(batch, model.modalities)
  _, _, mu_k, logvar_k = model.apply(variables, inputs, available, False,
                                     method=model.posteriors)
  return mu_k, logvar_k, fusion.valid_subsets(model.mask, available, available.shape[0])


def _as_generated(modality: str, output):
  """Decoder output -> what is shown/classified: images clipped to [0, 1], text argmax ids."""
  if is_text(modality):
    return jnp.argmax(output, axis=-1).astype(jnp.int32)  # [B, T]
  return jnp.clip(output, 0.0, 1.0)  # [B, S, S, 1]


@functools.partial(jax.jit, static_argnums=0)
def _decode(model: MoPoE, variables, z):
  """z [B, D] -> modality -> generated [B, ...] (see `_as_generated`)."""
  out = model.apply(variables, z, False, method=model.decode)
  return {m: _as_generated(m, x) for m, x in out.items()}


@functools.partial(jax.jit, static_argnames=("model", "latent"))
def _decode_subsets(model: MoPoE, variables, mu_k, logvar_k, rng, *, latent: str):
  """Decodes z of every subset posterior [K, B, D] -> modality -> generated [K, B, ...]."""
  if latent == "sample":
    z = mu_k + jnp.exp(0.5 * logvar_k) * jax.random.normal(rng, mu_k.shape, mu_k.dtype)
  else:
    z = mu_k
  return jax.lax.map(lambda z_k: _decode(model, variables, z_k), z)  # one subset at a time


# ------------------------------------------------------------------------------------------------
# Encoding a split.


@dataclasses.dataclass
class EncodedSplit:
  """Subset posteriors and labels of a split's studies (host numpy arrays, split order)."""
  split: str
  mu_k: np.ndarray        # [K, N, D] subset posterior means
  logvar_k: np.ndarray | None  # [K, N, D] subset posterior log-variances (None: not kept)
  valid: np.ndarray       # bool [N, K] subset valid (all its modalities available)
  available: np.ndarray   # bool [N, M] in the model's modality order
  labels: np.ndarray      # float32 [N, 14] 1 / 0 / -1 / NaN
  finding: np.ndarray     # int32 [N]
  classifier_probs: dict = dataclasses.field(default_factory=dict)  # modality -> [N, 15] real
  classifier_attributes: dict = dataclasses.field(default_factory=dict)  # image view -> [N, A]
  studies: dict = dataclasses.field(default_factory=dict)  # first complete studies' batch rows

  @property
  def targets(self) -> np.ndarray:
    """int32 [N, 15], see `classifiers.label_targets`."""
    return classifiers_lib.label_targets(self.labels, self.finding)


def _model_batch(batch: dict, modalities: Sequence[str]) -> dict:
  return {k: batch[k] for k in (*modalities, "available")}


def encode_split(model: MoPoE, variables, builder: tfds.core.DatasetBuilder,
                 data_config: ml_collections.ConfigDict, split: str, *, batch_size: int,
                 max_examples: int | None = None,
                 classifiers: classifiers_lib.Classifiers | None = None,
                 keep_complete: int = 0, keep_logvar: bool = True) -> EncodedSplit:
  """One pass over ``split`` (its first ``max_examples`` studies): every subset's posterior.

  Args:
    classifiers: also run these on the real inputs (the coherence upper reference).
    keep_complete: keep the batch rows (images, text, ``available``, ``index`` into the split)
      of the first this-many studies that have every modality of the model, for the grids.
    keep_logvar: keep the log-variances (generation needs them, the probes do not).
  """
  total = pipeline.num_examples(builder, split,
                                require_complete=bool(data_config.get("require_complete")))
  total = total if max_examples is None else min(total, max_examples)
  columns = [DATA_MODALITIES.index(m) for m in model.modalities]
  clf_modalities = list(classifiers.modules) if classifiers else []
  parts, probs, attributes, kept = [], {m: [] for m in clf_modalities}, {}, []
  seen, start, log_every = 0, time.perf_counter(), None
  for batch in pipeline.eval_iterator(builder, data_config, split, batch_size=batch_size,
                                      process_index=0, process_count=1):
    rows = np.flatnonzero(batch["valid"])[:max(total - seen, 0)]
    if rows.size == 0:
      break
    mu_k, logvar_k, valid = jax.device_get(
        _posteriors(model, variables, _model_batch(batch, model.modalities)))
    available = batch["available"][:, columns]
    parts.append((mu_k[:, rows], logvar_k[:, rows] if keep_logvar else None, valid[rows],
                  available[rows], batch["labels"][rows], batch["finding"][rows]))
    for m in clf_modalities:
      p, a = classifiers.predict(m, batch[m])
      probs[m].append(p[rows])
      if not is_text(m):
        attributes.setdefault(m, []).append(a[rows])
    if len(kept) < keep_complete:
      complete = rows[available[rows].all(axis=1)][:keep_complete - len(kept)]
      kept.extend({**{m: batch[m][i] for m in model.modalities},
                   "available": available[i], "index": seen + int(np.searchsorted(rows, i))}
                  for i in complete)
    seen += rows.size
    log_every = log_every or max(1, (total // rows.size) // 10 if rows.size else 1)
    if len(parts) % log_every == 0 or seen >= total:
      elapsed = time.perf_counter() - start
      logging.info("Encoded %d/%d studies of %s (%.0f studies/s, ETA %.0f s).", seen, total,
                   split, seen / elapsed, (total - seen) * elapsed / max(seen, 1))
    if seen >= total:
      break
  if not parts:
    raise ValueError(f"Split {split!r} of {builder.info.full_name} has no studies to evaluate.")
  mu_k, logvar_k, valid, available, labels, finding = (
      np.concatenate(p, axis=1 if i < 2 else 0) if p[0] is not None else None
      for i, p in enumerate(zip(*parts)))
  studies = ({k: np.stack([s[k] for s in kept]) for k in kept[0]} if kept else {})
  return EncodedSplit(split=split, mu_k=mu_k, logvar_k=logvar_k, valid=valid,
                      available=available, labels=labels, finding=finding.astype(np.int32),
                      classifier_probs={m: np.concatenate(v) for m, v in probs.items()},
                      classifier_attributes={m: np.concatenate(v) for m, v in attributes.items()},
                      studies=studies)


# ------------------------------------------------------------------------------------------------
# 1. Latent linear probes.


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


def _class_problem(y: np.ndarray, split: str) -> str | None:
  """Why the labels ``y`` [N] cannot be scored by average precision, or None."""
  positives = int(y.sum())
  negatives = int(y.size - positives)
  if positives < MIN_CLASS_EXAMPLES or negatives < MIN_CLASS_EXAMPLES:
    return (f"n/a ({positives} positive and {negatives} negative studies in the {split} split; "
            f"at least {MIN_CLASS_EXAMPLES} of each needed)")
  return None


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
      if _class_problem(y, test_split):
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
      problem = _class_problem(y_test, test_split)
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
                 _fmt(scores.get(HEADLINE_LABEL)))
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


def _fmt(value, std=None, digits: int = 3) -> str:
  if value is None:
    return "n/a"
  text = f"{value:.{digits}f}"
  return text if not std else f"{text} ± {std:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def probes_markdown(probes: dict, method: str = "MoPoE (this model)", level: int = 1) -> str:
  """The probe tables: the paper's Table 1 (label Finding) and every label, as Markdown."""
  names = list(probes["subsets"])
  labels = list(probes["random"])
  repeats = probes["settings"]["repeats"]

  def cell(source, name, label):
    value = probes[source][name][label]
    if value is None:
      return probes["skipped"][name].get(label, "n/a")
    return _fmt(value, probes["std"][name][label] if source == "subsets" and repeats > 1
                else None)

  h = "#" * level
  out = [f"{h} Latent linear probes: average precision, label {HEADLINE_LABEL}, "
         f"{probes['settings']['test_split']} split",
         "",
         _table(["method"] + names,
                [[method] + [cell("subsets", n, HEADLINE_LABEL) for n in names],
                 ["random"] + [_fmt(probes["random_per_subset"][n][HEADLINE_LABEL])
                               for n in names]]),
         "",
         f"Logistic regression on the posterior mean of each subset, "
         f"{probes['settings']['train_examples']} train studies drawn with replacement"
         + (f", mean ± std over {repeats} draws" if repeats > 1 else ", one draw")
         + f". Targets: {TARGETS_NOTE}. The random row is each column's prevalence among its "
         f"scored test studies; over the whole split it is "
         f"{_fmt(probes['random'][HEADLINE_LABEL])}.",
         "",
         f"{h} Every label",
         "",
         _table(["label"] + names + ["random"],
                [[l] + [cell("subsets", n, l) for n in names] + [_fmt(probes["random"][l])]
                 for l in labels])]
  if "legacy" in probes:
    out += ["", f"{h} LEGACY metric (not an average precision of the probe)", "",
            probes["settings"]["legacy"] + "; for comparison with the reference code only.", "",
            _table(["label"] + names,
                   [[l] + [cell("legacy", n, l) for n in names] for l in labels])]
  return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
# 2. Generation.


def generate_from_posteriors(model: MoPoE, variables, mu_k: np.ndarray, logvar_k: np.ndarray,
                             rng, *, batch_size: int,
                             latent: str = "sample") -> Iterator[tuple[slice, dict]]:
  """Decodes every subset's posterior for studies in chunks of ``batch_size``.

  Args:
    mu_k, logvar_k: [K, N, D] subset posteriors.
    latent: 'sample' (one z ~ q_subset per study) or 'mean' (z = its mean).

  Yields:
    (rows, generated): ``rows`` a slice of the N studies, ``generated`` modality -> numpy
    [K, batch_size, ...] (the last chunk is padded; use ``[:, :rows.stop - rows.start]``):
    images in [0, 1] [.., S, S, 1], report word ids [.., T].
  """
  if latent not in LATENTS:
    raise ValueError(f"Unknown latent {latent!r}; choose one of {LATENTS}.")
  num = mu_k.shape[1]
  for chunk, first in enumerate(range(0, num, batch_size)):
    rows = slice(first, min(first + batch_size, num))
    pad = ((0, 0), (0, batch_size - (rows.stop - rows.start)), (0, 0))
    generated = _decode_subsets(model, variables, np.pad(mu_k[:, rows], pad),
                                np.pad(logvar_k[:, rows], pad), jax.random.fold_in(rng, chunk),
                                latent=latent)
    yield rows, jax.device_get(generated)


def conditional_generation(model: MoPoE, variables, batch: dict, rng, *,
                           latent: str = "sample") -> dict[str, dict[str, np.ndarray]]:
  """subset name -> modality -> generated [B, ...] from every row of a pipeline ``batch``."""
  mu_k, logvar_k, _ = jax.device_get(
      _posteriors(model, variables, _model_batch(batch, model.modalities)))
  (_, generated), = generate_from_posteriors(model, variables, mu_k, logvar_k, rng,
                                             batch_size=mu_k.shape[1], latent=latent)
  names = subsets_lib.subset_names(model.modalities, model.mask)
  return {name: {m: x[k] for m, x in generated.items()} for k, name in enumerate(names)}


def _subset_grid(model: MoPoE, subset_row: np.ndarray, studies: dict,
                 generated: dict) -> np.ndarray:
  """The given image views of a subset above the line, every generated view below."""
  given = {m: studies[m] for m, used in zip(model.modalities, subset_row) if used}
  given_available = {m: studies["available"][:, i] for i, m in enumerate(model.modalities)}
  return visualize.comparison_grid(given, generated, above_available=given_available)


def conditional_generation_grids(model: MoPoE, variables, batch: dict, rng, *,
                                 latent: str = "sample") -> dict[str, np.ndarray]:
  """subset name -> uint8 [H, W, 3] grid for TensorBoard: the subset's given image views of
  each study (a column) above a red line, the views generated from q_subset below.

  ``batch``: a pipeline batch (numpy; images uint8) of the studies to show. The model must have
  an image modality.
  """
  generated = conditional_generation(model, variables, batch, rng, latent=latent)
  studies = {**{m: batch[m] for m in model.modalities},
             "available": batch["available"][:, [DATA_MODALITIES.index(m)
                                                 for m in model.modalities]]}
  return {name: _subset_grid(model, row, studies, generated[name])
          for row, name in zip(model.mask, generated)}


def prior_samples(model: MoPoE, variables, rng, num_samples: int) -> dict[str, np.ndarray]:
  """Unconditional generation: modality -> generated [num_samples, ...] from z ~ N(0, I)."""
  z = jax.random.normal(rng, (num_samples, model.latent_dim))
  return jax.device_get(_decode(model, variables, z))


def prior_grid(model: MoPoE, variables, rng, num_samples: int) -> np.ndarray:
  """uint8 [H, W, 3]: one column per prior sample, one row per image view."""
  return visualize.samples_grid(prior_samples(model, variables, rng, num_samples))


def _has_images(model: MoPoE) -> bool:
  return any(not is_text(m) for m in model.modalities)


def _reports_markdown(title: str, image: str | None, rows: Sequence[Sequence[str]],
                      header: Sequence[str]) -> str:
  out = [f"# {title}", ""]
  if image:
    out += [f"![{title}]({image})", ""]
  out += [_table(header, [[c.replace("|", "\\|") for c in r] for r in rows]), ""]
  return "\n".join(out)


def write_generation(model: MoPoE, variables, test: EncodedSplit,
                     vocab: text_lib.Vocabulary | None, rng, out_dir: str, *, batch_size: int,
                     latent: str, num_prior: int) -> tuple[dict, dict[str, np.ndarray]]:
  """PNG grids and generated reports under ``out_dir`` for every subset and the prior.

  Returns (a summary for results.json, name -> uint8 grid [H, W, 3] for TensorBoard).
  """
  os.makedirs(out_dir, exist_ok=True)
  names = subsets_lib.subset_names(model.modalities, model.mask)
  text = next((m for m in model.modalities if is_text(m)), None)
  grids, files, reports = {}, {}, {}
  studies = test.studies
  if not studies:
    raise ValueError(
        f"The {test.split!r} split has no study with all of {tuple(model.modalities)}; the "
        "generation grids show complete studies. Disable them with eval.generation=False.")
  num = len(studies["index"])
  cond_rng, prior_rng = jax.random.split(rng)
  (_, generated), = generate_from_posteriors(
      model, variables, test.mu_k[:, studies["index"]], test.logvar_k[:, studies["index"]],
      cond_rng, batch_size=max(batch_size, num), latent=latent)
  for k, (row, name) in enumerate(zip(model.mask, names)):
    gen = {m: x[k, :num] for m, x in generated.items()}
    png = None
    if _has_images(model):
      grids[name] = _subset_grid(model, row, studies, gen)
      png = f"from_{name}.png"
      visualize.save_png(os.path.join(out_dir, png), grids[name])
    rows = []
    for i in range(num):
      real = vocab.decode(studies[text][i]) if text and vocab else ""
      given = bool(text) and bool(row[list(model.modalities).index(text)])
      made = vocab.decode(gen[text][i]) if text and vocab else ""
      rows.append([str(i + 1), str(studies["index"][i]),
                   ("given: " if given else "not given: ") + real, made])
    if text and vocab:
      reports[name] = [r[-1] for r in rows]
    md = f"from_{name}.md"
    with open(os.path.join(out_dir, md), "w") as f:
      f.write(_reports_markdown(
          f"Generated from {name} ({latent} of q_subset)", png, rows,
          ["column", f"{test.split} study", "real report", "generated report"]))
    files[name] = {"png": png, "reports": md}
  prior = prior_samples(model, variables, prior_rng, num_prior)
  png = None
  if _has_images(model):
    grids["prior"] = visualize.samples_grid(prior)
    png = "prior.png"
    visualize.save_png(os.path.join(out_dir, png), grids["prior"])
  rows = [[str(i + 1), vocab.decode(prior[text][i]) if text and vocab else ""]
          for i in range(num_prior)]
  if text and vocab:
    reports["prior"] = [r[-1] for r in rows]
  with open(os.path.join(out_dir, "prior.md"), "w") as f:
    f.write(_reports_markdown("Unconditional samples, z ~ N(0, I)", png, rows,
                              ["column", "generated report"]))
  files["prior"] = {"png": png, "reports": "prior.md"}
  logging.info("Wrote generation grids and reports of %d subsets and the prior to %s.",
               len(names), out_dir)
  return {"latent": latent, "studies": [int(i) for i in studies["index"]],
          "reports": reports,
          "text_decoding": "argmax of the logits at each position",
          "image_values": "Laplace location clipped to [0, 1]",
          "files": {k: {kk: (os.path.join(GENERATION_DIR, v) if v else None)
                        for kk, v in f.items()} for k, f in files.items()}}, grids


# ------------------------------------------------------------------------------------------------
# 3. Coherence.


def _average_precisions(targets: np.ndarray, scores: np.ndarray, rows: np.ndarray,
                        label_names: Sequence[str], split: str):
  """{label: AP or None}, {label: reason} over ``rows`` of targets/scores [N, L]."""
  values, skipped = {}, {}
  for j, label in enumerate(label_names):
    y = targets[rows, j]
    problem = _class_problem(y, split)
    if problem:
      values[label], skipped[label] = None, problem
    else:
      values[label] = float(sklearn_metrics.average_precision_score(y, scores[rows, j]))
  return values, skipped


def attribute_correlations(true: np.ndarray, predicted: np.ndarray,
                           names: Sequence[str]) -> dict[str, float | None]:
  """Pearson correlation per attribute of [N, A] arrays; None where either side is constant."""
  out = {}
  for a, name in enumerate(names):
    x, y = true[:, a].astype(np.float64), predicted[:, a].astype(np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
      out[name] = None
    else:
      out[name] = float(np.corrcoef(x, y)[0, 1])
  return out


def coherence(model: MoPoE, variables, classifiers: classifiers_lib.Classifiers,
              test: EncodedSplit, rng, *, batch_size: int, latent: str,
              true_attributes: np.ndarray | None = None) -> dict:
  """Classifier average precision on generated modalities against the source's labels.

  For every test study, every subset valid for it and every modality, the modality is generated
  from q_subset (``latent``) and classified; AP of the classifier's probability against the
  source study's targets (`classifiers.label_targets`), over the studies valid for the subset.
  ``real`` is the same classifier on the real test data (studies that have the modality).
  With ``true_attributes`` [N, A] (synthetic_cxr), the image classifiers' attribute head on
  generated (and real) images is correlated with the source's attributes.
  """
  names = subsets_lib.subset_names(model.modalities, model.mask)
  targets = test.targets
  num, num_subsets = targets.shape[0], len(names)
  probs = {m: np.zeros((num_subsets, num, len(LABEL_NAMES)), np.float32) for m in model.modalities}
  attributes = {m: np.zeros((num_subsets, num, len(classifiers.attribute_names)), np.float32)
                for m in model.modalities if not is_text(m)}
  start = time.perf_counter()
  for rows, generated in generate_from_posteriors(model, variables, test.mu_k, test.logvar_k,
                                                  rng, batch_size=batch_size, latent=latent):
    n = rows.stop - rows.start
    for m, x in generated.items():
      for k in range(num_subsets):
        p, a = classifiers.predict(m, x[k])
        probs[m][k, rows] = p[:n]
        if m in attributes:
          attributes[m][k, rows] = a[:n]
    logging.info("Coherence: generated and classified %d/%d studies (%.0f s).", rows.stop, num,
                 time.perf_counter() - start)
  result = {"metric": "average precision of the classifier on the generated modality against "
                      "the source study's labels",
            "latent": latent, "targets": TARGETS_NOTE, "subsets": {}, "skipped": {},
            "finding_match_rate": {}, "real": {}, "real_skipped": {},
            "random": {l: float(targets[:, j].mean()) for j, l in enumerate(LABEL_NAMES)}}
  finding = list(LABEL_NAMES).index(HEADLINE_LABEL)
  for k, name in enumerate(names):
    rows = test.valid[:, k]
    scores, skips, matches = {}, {}, {}
    for m in model.modalities:
      scores[m], skips[m] = _average_precisions(targets, probs[m][k], rows, LABEL_NAMES,
                                                test.split)
      match = (probs[m][k, rows, finding] >= 0.5) == (targets[rows, finding] == 1)
      matches[m] = float(match.mean()) if rows.any() else None
    result["subsets"][name] = scores
    result["skipped"][name] = skips
    result["finding_match_rate"][name] = matches
  for i, m in enumerate(model.modalities):
    result["real"][m], result["real_skipped"][m] = _average_precisions(
        targets, test.classifier_probs[m], test.available[:, i], LABEL_NAMES, test.split)
  if true_attributes is not None and classifiers.attribute_names:
    result["attributes"] = _attribute_coherence(model, classifiers, test, attributes,
                                                true_attributes, names)
  return result


def _attribute_coherence(model, classifiers, test, attributes, true_attributes, names) -> dict:
  attr_names = classifiers.attribute_names
  out = {"metric": "Pearson correlation between the image classifier's attribute head on the "
                   "generated view and the source study's ground-truth attribute",
         "names": list(attr_names), "subsets": {}, "real": {}}
  for k, name in enumerate(names):
    rows = test.valid[:, k]
    out["subsets"][name] = {m: attribute_correlations(true_attributes[rows], a[k, rows],
                                                      attr_names)
                            for m, a in attributes.items()}
  for i, m in enumerate(model.modalities):
    if m in attributes:
      rows = test.available[:, i]
      out["real"][m] = attribute_correlations(true_attributes[rows],
                                              test.classifier_attributes[m][rows], attr_names)
  return out


# ------------------------------------------------------------------------------------------------
# 4. Likelihood.


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "image_scale",
                                             "mask_text_padding"))
def _log_weights(model: MoPoE, variables, batch: dict, rng, *, num_samples: int,
                 image_scale: float, mask_text_padding: bool):
  """Per-sample terms of the importance-sampling estimate for every subset proposal.

  Returns:
    log_lik:   [S, M, K, B] log p(x_m | z_s) with z_s ~ q_k(z | x_k)
    log_ratio: [S, K, B]    log p(z_s) - log q_k(z_s | x_k)
    kl:        [K, B]       KL(q_k || N(0, I)), for the single-sample ELBO
    valid:     bool [B, K]
  """
  inputs, available = inputs_from_batch(batch, model.modalities)
  _, _, mu_k, logvar_k = model.apply(variables, inputs, available, False,
                                     method=model.posteriors)
  num_subsets, batch_size, dim = mu_k.shape

  def one_sample(s):
    eps = jax.random.normal(jax.random.fold_in(rng, s), mu_k.shape, mu_k.dtype)
    z = mu_k + jnp.exp(0.5 * logvar_k) * eps  # [K, B, D]
    log_q = -0.5 * jnp.sum(jnp.square(eps) + logvar_k + _LOG_2PI, axis=-1)
    log_p = -0.5 * jnp.sum(jnp.square(z) + _LOG_2PI, axis=-1)
    out = model.apply(variables, z.reshape(num_subsets * batch_size, dim), False,
                      method=model.decode)
    log_lik = []
    for m in model.modalities:
      x = jnp.broadcast_to(inputs[m][None], (num_subsets,) + inputs[m].shape)
      x = x.reshape((num_subsets * batch_size,) + inputs[m].shape[1:])
      nll = (objective.categorical_nll(x, out[m], mask_text_padding) if is_text(m)
             else objective.laplace_nll(x, out[m], image_scale))
      log_lik.append(-nll.reshape(num_subsets, batch_size))
    return jnp.stack(log_lik), log_p - log_q

  log_lik, log_ratio = jax.lax.map(one_sample, jnp.arange(num_samples))
  kl = fusion.gaussian_kl(mu_k, logvar_k)
  return log_lik, log_ratio, kl, fusion.valid_subsets(model.mask, available, batch_size)


def log_mean_exp(x: np.ndarray, axis: int = 0) -> np.ndarray:
  """log (1/S) sum_s exp(x_s) along ``axis``, computed with logsumexp."""
  return special.logsumexp(x, axis=axis) - math.log(x.shape[axis])


def _sample_counts(num_samples: int) -> list[int]:
  counts = [2 ** i for i in range(int(math.log2(num_samples)) + 1)]
  return counts if counts[-1] == num_samples else counts + [num_samples]


def summarize_likelihood(log_lik: np.ndarray, log_ratio: np.ndarray, kl: np.ndarray,
                         valid: np.ndarray, available: np.ndarray,
                         subset_names: Sequence[str], modalities: Sequence[str]) -> dict:
  """Means over studies of the importance-sampled log p(x) and the single-sample ELBO.

  For subset k and target t (a modality, or 'joint' = all modalities the study has):
    log p(x_t) ~= log (1/S) sum_s p(x_t | z_s) p(z_s) / q_k(z_s | x_k),  z_s ~ q_k,
    ELBO_1 = log p(x_t | z_1) - KL(q_k || N(0, I)),
  averaged over the studies for which k is valid (and that have t). ``log_px_by_samples`` gives
  the estimate with the first 1, 2, 4, ... samples (it grows with S in expectation).

  Args: log_lik [S, M, K, N], log_ratio [S, K, N], kl [K, N], valid bool [N, K],
    available bool [N, M].
  """
  num_samples = log_lik.shape[0]
  joint = np.sum(np.where(available.T[None, :, None, :], log_lik, 0.0), axis=1)  # [S, K, N]
  out = {}
  for k, name in enumerate(subset_names):
    entry = {}
    targets = [(m, log_lik[:, i, k], available[:, i]) for i, m in enumerate(modalities)]
    for target, ll, has in targets + [("joint", joint[:, k], np.ones(len(valid), bool))]:
      rows = valid[:, k] & has
      if not rows.any():
        entry[target] = None
        continue
      lw = ll[:, rows] + log_ratio[:, k, rows]  # [S, n]
      by_samples = {str(s): float(log_mean_exp(lw[:s]).mean()) for s in _sample_counts(num_samples)}
      entry[target] = {"log_px": by_samples[str(num_samples)],
                       "elbo": float((ll[0, rows] - kl[k, rows]).mean()),
                       "log_px_by_samples": by_samples, "num_examples": int(rows.sum())}
    out[name] = entry
  return out


def likelihood(model: MoPoE, variables, builder: tfds.core.DatasetBuilder,
               data_config: ml_collections.ConfigDict, split: str, rng, *, num_samples: int,
               num_examples: int, batch_size: int, image_scale: float,
               mask_text_padding: bool = False) -> dict:
  """Importance-sampled log p(x) per subset proposal on the first ``num_examples`` studies.

  Images: Laplace(loc = decoder output, scale = ``image_scale``), a density over [0, 1] pixel
  values; text: categorical from the logits (``mask_text_padding`` as in training). Nats per
  study. See `summarize_likelihood`.
  """
  if num_samples < 1 or num_examples < 1:
    raise ValueError(f"eval.likelihood_samples ({num_samples}) and eval.likelihood_examples "
                     f"({num_examples}) must be positive.")
  columns = [DATA_MODALITIES.index(m) for m in model.modalities]
  parts, seen, start = [], 0, time.perf_counter()
  for i, batch in enumerate(pipeline.eval_iterator(builder, data_config, split,
                                                   batch_size=batch_size, process_index=0,
                                                   process_count=1)):
    rows = np.flatnonzero(batch["valid"])[:num_examples - seen]
    if rows.size == 0:
      break
    log_lik, log_ratio, kl, valid = jax.device_get(_log_weights(
        model, variables, _model_batch(batch, model.modalities), jax.random.fold_in(rng, i),
        num_samples=num_samples, image_scale=float(image_scale),
        mask_text_padding=bool(mask_text_padding)))
    parts.append((log_lik[..., rows], log_ratio[..., rows], kl[:, rows], valid[rows],
                  batch["available"][rows][:, columns]))
    seen += rows.size
    logging.info("Likelihood: %d/%d studies, %d samples x %d subsets (%.0f s).", seen,
                 num_examples, num_samples, len(model.mask), time.perf_counter() - start)
    if seen >= num_examples:
      break
  if not parts:
    raise ValueError(f"Split {split!r} of {builder.info.full_name} has no studies.")
  log_lik, log_ratio, kl, valid, available = (
      np.concatenate(p, axis=-1 if i < 3 else 0) for i, p in enumerate(zip(*parts)))
  names = subsets_lib.subset_names(model.modalities, model.mask)
  return {"units": "nats per study; image terms are Laplace densities of pixel values in [0, 1]",
          "num_samples": num_samples, "num_examples": int(seen), "split": split,
          "proposal": "q_subset (the subset's PoE posterior)",
          "elbo": "single-sample: log p(x | z_1) - KL(q_subset || N(0, I))",
          "subsets": summarize_likelihood(log_lik, log_ratio, kl, valid, available, names,
                                          model.modalities)}


# ------------------------------------------------------------------------------------------------
# Orchestration and reports.


def _jsonable(value):
  """numpy scalars/arrays -> Python; NaN / inf -> None (strict JSON)."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, (np.floating, float)):
    return float(value) if np.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def _write_json(path: str, value) -> None:
  with open(path, "w") as f:
    json.dump(_jsonable(value), f, indent=1, allow_nan=False)


def _check_attribute_rows(true_labels: np.ndarray, test: EncodedSplit, builder) -> None:
  same = (true_labels.shape == test.labels.shape and
          np.array_equal(np.nan_to_num(true_labels, nan=-9.0),
                         np.nan_to_num(test.labels, nan=-9.0)))
  if not same:
    raise RuntimeError(
        f"The attributes read from {builder.info.full_name} split {test.split!r} do not line up "
        f"with the evaluated studies ({true_labels.shape[0]} vs {test.labels.shape[0]} rows, or "
        "different labels); the split's order changed between the two reads. Disable "
        "eval.attribute_coherence to skip this score.")


def run_evaluation(config: ml_collections.ConfigDict, workdir: str, model: MoPoE, variables,
                   builder: tfds.core.DatasetBuilder, vocab: text_lib.Vocabulary | None,
                   writer=None, *, step: int = 0) -> dict:
  """Runs the evaluations that ``config.eval`` enables and writes the results.

  Args:
    config: the run's config (``data``, ``model``, ``eval``, ``classifier``).
    workdir: outputs go to ``<workdir>/eval/``; classifiers to ``<workdir>/classifiers/``
      unless ``classifier.checkpoint_dir`` is set.
    model: the `MoPoE` module; variables: its restored {'params', 'batch_stats'}.
    builder: the prepared dataset builder; vocab: the report vocabulary (None: no text).
    writer: a clu metric writer for scalars and images (optional); step: their step.

  Returns:
    The results dict written to ``<workdir>/eval/results.json``: 'settings', and 'probes',
    'generation', 'coherence', 'likelihood' for the parts that ran.
  """
  ev, data = config.eval, config.data
  if ev.generation_latent not in LATENTS:
    raise ValueError(f"eval.generation_latent must be one of {LATENTS}, got "
                     f"{ev.generation_latent!r}.")
  eval_dir = os.path.join(workdir, EVAL_DIR)
  os.makedirs(eval_dir, exist_ok=True)
  names = subsets_lib.subset_names(model.modalities, model.mask)
  rng = jax.random.key(ev.seed)
  gen_rng, coherence_rng, likelihood_rng = jax.random.split(rng, 3)
  results: dict[str, Any] = {"settings": {
      "dataset": builder.info.full_name, "test_split": data.test_split,
      "modalities": list(model.modalities), "subsets": names, "step": step,
      "eval": ev.to_dict()}}
  grids: dict[str, np.ndarray] = {}
  start = time.perf_counter()

  classifiers = None
  if ev.coherence:
    classifiers = classifiers_lib.get_classifiers(
        config, builder, modalities=model.modalities, vocab_size=model.vocab_size,
        classifier_dir=classifiers_lib.classifier_dir_from_config(config, workdir),
        use_attributes=bool(ev.attribute_coherence))
  test = None
  if ev.probes or ev.generation or ev.coherence:
    test = encode_split(model, variables, builder, data, data.test_split,
                        batch_size=ev.batch_size, classifiers=classifiers,
                        keep_complete=ev.generation_studies if ev.generation else 0)

  if ev.probes:
    train = encode_split(model, variables, builder, data, data.train_split,
                         batch_size=ev.batch_size, max_examples=ev.probe_max_train_pool,
                         keep_logvar=False)
    probes = linear_probes(
        train.mu_k, train.valid, train.targets, test.mu_k, test.valid, test.targets, names,
        num_train_examples=ev.probe_train_examples, repeats=ev.probe_repeats, seed=ev.seed,
        max_iter=ev.probe_max_iter, legacy=ev.probe_legacy_metric,
        min_test_examples=ev.probe_min_test_examples, train_split=data.train_split,
        test_split=data.test_split)
    results["probes"] = probes
    _write_json(os.path.join(eval_dir, "probes.json"), probes)
    with open(os.path.join(eval_dir, "probes.md"), "w") as f:
      f.write(probes_markdown(probes))

  if ev.generation:
    results["generation"], grids = write_generation(
        model, variables, test, vocab, gen_rng, os.path.join(eval_dir, GENERATION_DIR),
        batch_size=ev.batch_size, latent=ev.generation_latent, num_prior=ev.prior_samples)

  if ev.coherence:
    true_attributes = None
    if classifiers.attribute_names:
      true_attributes, true_labels = classifiers_lib.read_attributes(
          builder, data.test_split, classifiers.attribute_names,
          require_complete=bool(data.get("require_complete")))
      _check_attribute_rows(true_labels, test, builder)
    results["coherence"] = coherence(model, variables, classifiers, test, coherence_rng,
                                     batch_size=ev.batch_size, latent=ev.generation_latent,
                                     true_attributes=true_attributes)

  if ev.likelihood:
    results["likelihood"] = likelihood(
        model, variables, builder, data, data.test_split, likelihood_rng,
        num_samples=ev.likelihood_samples, num_examples=ev.likelihood_examples,
        batch_size=ev.likelihood_batch_size, image_scale=config.model.image_scale,
        mask_text_padding=config.model.mask_text_padding)

  results["settings"]["seconds"] = time.perf_counter() - start
  _write_json(os.path.join(eval_dir, "results.json"), results)
  with open(os.path.join(eval_dir, "report.md"), "w") as f:
    f.write(report_markdown(results))
  if writer is not None:
    writer.write_scalars(step, summary_scalars(results))
    if grids:
      writer.write_images(step, {f"eval_generation/{k}": g[None] for k, g in grids.items()})
    writer.flush()
  logging.info("Evaluation written to %s (%.0f s).", eval_dir, time.perf_counter() - start)
  return results


def summary_scalars(results: dict) -> dict[str, float]:
  """The headline numbers as flat scalars for TensorBoard (None values left out)."""
  scalars = {}
  for name, scores in results.get("probes", {}).get("subsets", {}).items():
    scalars[f"eval_probe_ap/{name}/{HEADLINE_LABEL}"] = scores.get(HEADLINE_LABEL)
  for name, per_modality in results.get("coherence", {}).get("subsets", {}).items():
    for m, scores in per_modality.items():
      scalars[f"eval_coherence_ap/{name}->{m}/{HEADLINE_LABEL}"] = scores.get(HEADLINE_LABEL)
  for name, entry in results.get("likelihood", {}).get("subsets", {}).items():
    for target, values in entry.items():
      if values:
        scalars[f"eval_log_px/{name}/{target}"] = values["log_px"]
        scalars[f"eval_elbo/{name}/{target}"] = values["elbo"]
  return {k: float(v) for k, v in scalars.items() if v is not None}


def report_markdown(results: dict) -> str:
  """A readable summary of ``results`` (report.md)."""
  s = results["settings"]
  out = [f"# Evaluation of MoPoE on {s['dataset']} ({s['test_split']} split, step {s['step']})",
         ""]
  if "probes" in results:
    out += [probes_markdown(results["probes"], level=2),
            "Per-label details, std and skip reasons: [probes.json](probes.json), "
            "[probes.md](probes.md).", ""]
  if "coherence" in results:
    c = results["coherence"]
    modalities = s["modalities"]
    rows = [[name] + [_fmt(c["subsets"][name][m][HEADLINE_LABEL]) for m in modalities]
            for name in c["subsets"]]
    rows.append(["real test data (upper reference)"]
                + [_fmt(c["real"][m][HEADLINE_LABEL]) for m in modalities])
    rows.append(["random"] + [_fmt(c["random"][HEADLINE_LABEL])] * len(modalities))
    out += [f"## Coherence: classifier AP on generated modalities, label {HEADLINE_LABEL}", "",
            f"Rows: the subset given; columns: the modality generated from its posterior "
            f"({c['latent']}). Generated modalities inside the subset are reconstructions. All "
            "labels are in results.json.", "",
            _table(["given \\ generated"] + modalities, rows), ""]
    if "attributes" in c:
      a = c["attributes"]
      views = list(a["real"])
      mean_r = lambda d: _fmt(_nanmean(list(d.values())))  # noqa: E731
      rows = [[name] + [mean_r(a["subsets"][name][v]) for v in views] for name in a["subsets"]]
      rows.append(["real test images (upper reference)"] + [mean_r(a["real"][v]) for v in views])
      full = list(a["subsets"])[-1]
      per_attribute = [[n] + [_fmt(a["real"][v][n]) for v in views]
                       + [_fmt(a["subsets"][full][v][n]) for v in views] for n in a["names"]]
      out += ["## Attribute coherence (synthetic ground truth)", "",
              a["metric"] + ". Mean over the attributes:", "",
              _table(["given \\ generated"] + views, rows), "",
              f"Per attribute, real test images and generated from {full}:", "",
              _table(["attribute"] + [f"real {v}" for v in views]
                     + [f"from {full}: {v}" for v in views], per_attribute), ""]
  if "likelihood" in results:
    lk = results["likelihood"]
    targets = list(s["modalities"]) + ["joint"]
    rows = []
    for name, entry in lk["subsets"].items():
      rows.append([name] + [
          f"{entry[t]['log_px']:.1f} / {entry[t]['elbo']:.1f}" if entry.get(t) else "n/a"
          for t in targets])
    out += ["## Likelihood: importance-sampled log p(x) / single-sample ELBO", "",
            f"{lk['num_samples']} samples of q_subset per study, {lk['num_examples']} studies; "
            f"{lk['units']}.", "", _table(["proposal q_subset"] + targets, rows), ""]
  if "generation" in results:
    g = results["generation"]
    out += ["## Generation", "",
            f"Given inputs above the red line, generated views below ({g['latent']} of "
            f"q_subset); one column per {s['test_split']} study. Reports beside each grid.", ""]
    for name, files in g["files"].items():
      title = "prior N(0, I)" if name == "prior" else f"from {name}"
      out.append(f"### {title}")
      out.append("")
      if files["png"]:
        out.append(f"![{title}]({files['png']})")
        out.append("")
      out.append(f"Reports: [{files['reports']}]({files['reports']})")
      out.append("")
  return "\n".join(out) + "\n"


def _nanmean(values: Sequence[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


# ------------------------------------------------------------------------------------------------
# Evaluate mode: restore a checkpoint of a workdir and run everything above.


def evaluate(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> dict:
  """Restores a checkpoint of ``workdir`` (parameters and batch statistics only; the latest, or
  ``step`` / ``config.eval.checkpoint_step``) on this host's first device and runs
  `run_evaluation`. Works on a CPU for checkpoints trained on accelerators."""
  if jax.process_index() != 0:
    logging.info("Process %d: evaluation runs on process 0 only.", jax.process_index())
    return {}
  manager = checkpointing.create_manager(workdir, read_only=True)
  steps = list(manager.all_steps())
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint in {checkpointing.checkpoint_dir(workdir)}. Train first "
        f"(python main.py --config=... --workdir={workdir} --mode=train) or point --workdir at "
        "a run directory that has checkpoints/.")
  step = config.eval.checkpoint_step if step is None else step
  step = manager.latest_step() if step is None else int(step)
  if step not in steps:
    raise ValueError(f"No checkpoint of step {step} in {manager.directory}; available steps: "
                     f"{sorted(steps)}.")
  meta = manager.restore(step, args=checkpointing.meta_restore_args())[checkpointing.META]
  fingerprint = train_lib.config_fingerprint(config)
  if meta.get("fingerprint") != fingerprint:
    raise ValueError(
        f"The checkpoint of step {step} in {manager.directory} was trained with another model "
        f"shape (config fingerprint {meta.get('fingerprint')}, dataset "
        f"{meta.get('dataset')!r}) than the config given now ({fingerprint}, "
        f"{config.data.name!r}). Evaluate with the config it was trained with.")

  builder = pipeline.get_builder(config.data)
  train_lib.check_dataset_matches(config, builder)
  vocab = pipeline.load_vocabulary(builder)
  model = train_lib.create_model(config, len(vocab))
  device = jax.local_devices()[0]
  batch = train_lib.dummy_batch(config, max(8, len(model.mask)))
  shapes = jax.eval_shape(lambda: model.init(
      {n: jax.random.PRNGKey(0) for n in ("params", "sample", "dropout")},
      *inputs_from_batch(batch, config.data.modalities), False))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(device)), dict(shapes))
  variables, _ = checkpointing.restore_model_variables(manager, abstract, step)
  logging.info("Evaluating step %d of %s on %s.", step, manager.directory, device)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  results = run_evaluation(config, workdir, model, variables, builder, vocab, writer, step=step)
  eval_dir = os.path.join(os.path.abspath(workdir), EVAL_DIR)
  logging.info("Tables: %s (report.md, probes.md); JSON: results.json, probes.json; images and "
               "generated reports: %s", eval_dir, os.path.join(eval_dir, GENERATION_DIR))
  return results
