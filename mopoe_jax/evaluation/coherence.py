"""Coherence: do generated modalities carry the labels of the study they came from?

The protocol: docs/model.md#evaluation.

Classifiers trained on real data (`mopoe_jax.evaluation.classifiers`) label the generated
modalities; their average precision against the SOURCE study's labels, per subset, generated
modality and label, on the test split; the same classifiers on the real test data give the upper
reference. On datasets with ground-truth attributes (synthetic_cxr) the image classifiers'
attribute head is correlated with the source's attributes (``eval.coherence.attributes``). The
modalities are generated from a sample or the mean of q_subset (``eval.coherence.latent``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from absl import logging
import ml_collections
import numpy as np

# scikit-learn is imported where it is used (`_average_precisions`): only runs that score
# coherence load it.
from mopoe_jax.data.datasource import DataSource
from mopoe_jax.data.labels import PROBE_LABELS
from mopoe_jax.evaluation import classifiers as classifiers_lib
from mopoe_jax.evaluation.common import (
  HEADLINE_LABEL,
  Context,
  EncodedSplit,
  Evaluator,
  Result,
  class_problem,
  fmt,
  nanmean,
  table,
  targets_note,
)
from mopoe_jax.evaluation.generation import generate_from_posteriors
from mopoe_jax.vae import subsets as subsets_lib
from mopoe_jax.vae.latents import LATENTS
from mopoe_jax.vae.model import MoPoE, is_text


@dataclasses.dataclass
class CoherenceResult(Result):
  """`coherence`'s result (results.json's "coherence"); {subset: {modality: {label: AP}}} and
  the like, None where a label cannot be scored (the reason in the matching ``skipped``)."""

  metric: str
  latent: str  # 'sample' or 'mean' of q_subset
  targets: str  # how the 0/1 targets are made
  subsets: dict  # {subset: {generated modality: {label: AP or None}}}
  skipped: dict  # {subset: {modality: {label: why}}}
  finding_match_rate: dict  # {subset: {modality: share of Finding predicted right at 0.5}}
  real: dict  # {modality: {label: AP or None}}: the classifiers on the real test data
  real_skipped: dict
  random: dict  # {label: prevalence in the test split}
  # Datasets with ground-truth attributes: {"metric", "names", "subsets": {subset: {view:
  # {attribute: r}}}, "real": {view: {attribute: r}}}; absent from results.json otherwise.
  attributes: dict | None = None

  OMIT_IF_NONE = ("attributes",)


@dataclasses.dataclass
class RealPredictions:
  """The classifiers on a split's real studies, rows in split order (as `EncodedSplit`)."""

  probs: dict  # modality -> float32 [N, 15]
  attributes: dict  # image modality -> float32 [N, A] in the data's units


def classify_split(
  classifiers: classifiers_lib.Classifiers, data: DataSource, split: str, *, batch_size: int
) -> RealPredictions:
  """One pass over ``split`` on this process: every classifier on the real inputs."""
  probs, attributes = {m: [] for m in classifiers.modules}, {}
  for batch in data.eval_batches(split, batch_size=batch_size, process_index=0, process_count=1):
    rows = np.flatnonzero(batch["valid"])
    if rows.size == 0:
      break
    for m in classifiers.modules:
      p, a = classifiers.predict(m, batch[m])
      probs[m].append(p[rows])
      if not is_text(m):
        attributes.setdefault(m, []).append(a[rows])
  return RealPredictions(
    probs={m: np.concatenate(v) for m, v in probs.items()},
    attributes={m: np.concatenate(v) for m, v in attributes.items()},
  )


def _average_precisions(
  targets: np.ndarray, scores: np.ndarray, rows: np.ndarray, label_names: Sequence[str], split: str
):
  """{label: AP or None}, {label: reason} over ``rows`` of targets/scores [N, L]."""
  from sklearn import metrics as sklearn_metrics  # pylint: disable=g-import-not-at-top

  values, skipped = {}, {}
  for j, label in enumerate(label_names):
    y = targets[rows, j]
    problem = class_problem(y, split)
    if problem:
      values[label], skipped[label] = None, problem
    else:
      values[label] = float(sklearn_metrics.average_precision_score(y, scores[rows, j]))
  return values, skipped


def attribute_correlations(
  true: np.ndarray, predicted: np.ndarray, names: Sequence[str]
) -> dict[str, float | None]:
  """Pearson correlation per attribute of [N, A] arrays; None where either side is constant."""
  out = {}
  for a, name in enumerate(names):
    x, y = true[:, a].astype(np.float64), predicted[:, a].astype(np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
      out[name] = None
    else:
      out[name] = float(np.corrcoef(x, y)[0, 1])
  return out


def coherence(
  model: MoPoE,
  variables,
  classifiers: classifiers_lib.Classifiers,
  test: EncodedSplit,
  real: RealPredictions,
  rng,
  *,
  batch_size: int,
  latent: str,
  true_attributes: np.ndarray | None = None,
) -> CoherenceResult:
  """Classifier average precision on generated modalities against the source's labels.

  For every test study, every subset valid for it and every modality, the modality is generated
  from q_subset (``latent``) and classified; AP of the classifier's probability against the
  source study's targets (`labels.label_targets`), over the studies valid for the subset.
  ``real`` holds the same classifiers on the real test data (`classify_split`); scored on the
  studies that have the modality.
  With ``true_attributes`` [N, A] (synthetic_cxr), the image classifiers' attribute head on
  generated (and real) images is correlated with the source's attributes.
  """
  names = subsets_lib.subset_names(model.modalities, model.mask)
  targets = test.targets
  num, num_subsets = targets.shape[0], len(names)
  probs = {m: np.zeros((num_subsets, num, len(PROBE_LABELS)), np.float32) for m in model.modalities}
  attributes = {
    m: np.zeros((num_subsets, num, len(classifiers.attribute_names)), np.float32)
    for m in model.modalities
    if not is_text(m)
  }
  start = time.perf_counter()
  for rows, generated in generate_from_posteriors(
    model, variables, test.mu_k, test.logvar_k, rng, batch_size=batch_size, latent=latent
  ):
    n = rows.stop - rows.start
    for m, x in generated.items():
      for k in range(num_subsets):
        p, a = classifiers.predict(m, x[k])
        probs[m][k, rows] = p[:n]
        if m in attributes:
          attributes[m][k, rows] = a[:n]
    logging.info(
      "Coherence: generated and classified %d/%d studies (%.0f s).",
      rows.stop,
      num,
      time.perf_counter() - start,
    )
  result = CoherenceResult(
    metric="average precision of the classifier on the generated modality against "
    "the source study's labels",
    latent=latent,
    targets=targets_note(test.finding_rule),
    subsets={},
    skipped={},
    finding_match_rate={},
    real={},
    real_skipped={},
    random={l: float(targets[:, j].mean()) for j, l in enumerate(PROBE_LABELS)},
  )
  finding = list(PROBE_LABELS).index(HEADLINE_LABEL)
  for k, name in enumerate(names):
    rows = test.valid[:, k]
    scores, skips, matches = {}, {}, {}
    for m in model.modalities:
      scores[m], skips[m] = _average_precisions(
        targets, probs[m][k], rows, PROBE_LABELS, test.split
      )
      match = (probs[m][k, rows, finding] >= 0.5) == (targets[rows, finding] == 1)
      matches[m] = float(match.mean()) if rows.any() else None
    result.subsets[name] = scores
    result.skipped[name] = skips
    result.finding_match_rate[name] = matches
  for i, m in enumerate(model.modalities):
    result.real[m], result.real_skipped[m] = _average_precisions(
      targets, real.probs[m], test.available[:, i], PROBE_LABELS, test.split
    )
  if true_attributes is not None and classifiers.attribute_names:
    result.attributes = _attribute_coherence(
      model, classifiers, test, real, attributes, true_attributes, names
    )
  return result


def _attribute_coherence(
  model, classifiers, test, real, attributes, true_attributes, names
) -> dict:
  attr_names = classifiers.attribute_names
  out = {
    "metric": "Pearson correlation between the image classifier's attribute head on the "
    "generated view and the source study's ground-truth attribute",
    "names": list(attr_names),
    "subsets": {},
    "real": {},
  }
  for k, name in enumerate(names):
    rows = test.valid[:, k]
    out["subsets"][name] = {
      m: attribute_correlations(true_attributes[rows], a[k, rows], attr_names)
      for m, a in attributes.items()
    }
  for i, m in enumerate(model.modalities):
    if m in attributes:
      rows = test.available[:, i]
      out["real"][m] = attribute_correlations(
        true_attributes[rows], real.attributes[m][rows], attr_names
      )
  return out


def _check_attribute_rows(true_labels: np.ndarray, test: EncodedSplit, dataset: str) -> None:
  same = true_labels.shape == test.labels.shape and np.array_equal(
    np.nan_to_num(true_labels, nan=-9.0), np.nan_to_num(test.labels, nan=-9.0)
  )
  if not same:
    raise RuntimeError(
      f"The attributes read from {dataset} split {test.split!r} do not line up "
      f"with the evaluated studies ({true_labels.shape[0]} vs {test.labels.shape[0]} rows, or "
      "different labels); the split's order changed between the two reads. Set "
      "eval.coherence.attributes=False to skip this score."
    )


class Coherence(Evaluator):
  """Trains (or restores) the classifiers, then scores generation from every subset."""

  name = "coherence"

  def default_config(self) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.latent = "sample"  # generate from a 'sample' of q_subset or its 'mean'
    c.attributes = True  # score generated images against ground-truth attributes where the
    # dataset has them (synthetic_cxr)
    return c

  def check(self, config: ml_collections.ConfigDict) -> None:
    latent = config.eval.coherence.latent
    if latent not in LATENTS:
      raise ValueError(f"config.eval.coherence.latent must be one of {LATENTS}, got {latent!r}.")

  def run(self, ctx: Context) -> CoherenceResult:
    ev, data_config = ctx.config.eval, ctx.config.data
    classifiers = classifiers_lib.get_classifiers(
      ctx.config,
      ctx.data,
      modalities=ctx.model.modalities,
      vocab_size=ctx.model.vocab_size,
      classifier_dir=classifiers_lib.classifier_dir_from_config(ctx.config, ctx.workdir),
      use_attributes=bool(ev.coherence.attributes),
    )
    test = ctx.test()
    real = classify_split(classifiers, ctx.data, data_config.test_split, batch_size=ev.batch_size)
    true_attributes = None
    if classifiers.attribute_names:
      true_attributes, true_labels = ctx.data.attributes(data_config.test_split)
      _check_attribute_rows(true_labels, test, ctx.data.name)
    return coherence(
      ctx.model,
      ctx.variables,
      classifiers,
      test,
      real,
      ctx.rng_for(self.name),
      batch_size=ev.batch_size,
      latent=ev.coherence.latent,
      true_attributes=true_attributes,
    )

  def summary_scalars(self, result: CoherenceResult) -> dict[str, float | None]:
    """Label Finding's AP per subset given and modality generated."""
    return {
      f"eval_coherence_ap/{name}->{m}/{HEADLINE_LABEL}": scores.get(HEADLINE_LABEL)
      for name, per_modality in result.subsets.items()
      for m, scores in per_modality.items()
    }

  def markdown(self, result: CoherenceResult, settings: dict) -> str:
    """The report.md section: label Finding per subset and generated modality; attributes."""
    c = result
    modalities = settings["modalities"]
    rows = [
      [name] + [fmt(c.subsets[name][m][HEADLINE_LABEL]) for m in modalities] for name in c.subsets
    ]
    rows.append(
      ["real test data (upper reference)"] + [fmt(c.real[m][HEADLINE_LABEL]) for m in modalities]
    )
    rows.append(["random"] + [fmt(c.random[HEADLINE_LABEL])] * len(modalities))
    out = [
      f"## Coherence: classifier AP on generated modalities, label {HEADLINE_LABEL}",
      "",
      f"Rows: the subset given; columns: the modality generated from its posterior "
      f"({c.latent}). Generated modalities inside the subset are reconstructions. All "
      "labels are in results.json.",
      "",
      table(["given \\ generated"] + modalities, rows),
      "",
    ]
    if c.attributes is not None:
      out += _attributes_markdown(c.attributes)
    return "\n".join(out)


def _attributes_markdown(a: dict) -> list[str]:
  views = list(a["real"])
  mean_r = lambda d: fmt(nanmean(list(d.values())))  # noqa: E731
  rows = [[name] + [mean_r(a["subsets"][name][v]) for v in views] for name in a["subsets"]]
  rows.append(["real test images (upper reference)"] + [mean_r(a["real"][v]) for v in views])
  full = list(a["subsets"])[-1]
  per_attribute = [
    [n] + [fmt(a["real"][v][n]) for v in views] + [fmt(a["subsets"][full][v][n]) for v in views]
    for n in a["names"]
  ]
  return [
    "## Attribute coherence (synthetic ground truth)",
    "",
    a["metric"] + ". Mean over the attributes:",
    "",
    table(["given \\ generated"] + views, rows),
    "",
    f"Per attribute, real test images and generated from {full}:",
    "",
    table(
      ["attribute"] + [f"real {v}" for v in views] + [f"from {full}: {v}" for v in views],
      per_attribute,
    ),
    "",
  ]
