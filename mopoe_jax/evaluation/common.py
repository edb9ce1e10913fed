"""What the evaluators share: the evaluator base, the evaluation context, encoding a split, tables
and JSON.

An evaluator is an `Evaluator` (its name, its settings ``config.eval.<name>`` with their
defaults and checks, ``run(ctx) -> Result``, its TensorBoard scalars and its section of
report.md), registered in `mopoe_jax.evaluation.registry`. `Context` carries what every evaluator
needs (config, model, restored variables, data source, output directory, rng) and encodes the
test split at most once (`Context.test`). A `Result` is a dataclass whose ``to_json()`` is the
evaluator's entry in results.json.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import time
from typing import Any, ClassVar, Sequence
import zlib

from absl import logging
import jax
import ml_collections
import numpy as np

from mopoe_jax.data import labels as labels_lib
from mopoe_jax.data.datasource import DataSource
from mopoe_jax.platform import paths
from mopoe_jax.vae import subsets as subsets_lib
from mopoe_jax.vae.latents import posteriors
from mopoe_jax.vae.model import DATA_MODALITIES, MoPoE

HEADLINE_LABEL = "Finding"
MIN_CLASS_EXAMPLES = 2  # positives and negatives a label needs in the scored split


def targets_note(finding_rule: str) -> str:
  """How the 0/1 targets are made, for tables and JSON (`labels.label_targets`)."""
  return (
    "positive = label value 1.0; negative = 0.0, -1.0 (uncertain) and NaN (not "
    f"mentioned); Finding (data.finding_rule={finding_rule!r}) = "
    f"{labels_lib.FINDING_RULE_NOTES[finding_rule]}"
  )


# ------------------------------------------------------------------------------------------------
# Encoding a split.


def model_batch(batch: dict, modalities: Sequence[str]) -> dict:
  """The entries of a pipeline batch that the model reads."""
  return {k: batch[k] for k in (*modalities, "available")}


@dataclasses.dataclass
class EncodedSplit:
  """Subset posteriors and labels of a split's studies (host numpy arrays, split order)."""

  split: str
  mu_k: np.ndarray  # [K, N, D] subset posterior means
  logvar_k: np.ndarray | None  # [K, N, D] subset posterior log-variances (None: not kept)
  valid: np.ndarray  # bool [N, K] subset valid (all its modalities available)
  available: np.ndarray  # bool [N, M] in the model's modality order
  labels: np.ndarray  # float32 [N, 14] 1 / 0 / -1 / NaN
  finding_rule: str  # how "Finding" is made from ``labels`` (config data.finding_rule)
  indices: np.ndarray  # int64 [N] each row's position in the split
  studies: dict = dataclasses.field(default_factory=dict)  # first complete studies' batch rows

  @property
  def targets(self) -> np.ndarray:
    """int32 [N, 15], see `labels.label_targets`."""
    return labels_lib.label_targets(self.labels, self.finding_rule)


def encode_split(
  model: MoPoE,
  variables,
  data: DataSource,
  split: str,
  *,
  batch_size: int,
  finding_rule: str,
  indices: np.ndarray | None = None,
  keep_complete: int = 0,
  keep_logvar: bool = True,
) -> EncodedSplit:
  """One pass over ``split`` (or its studies at ``indices``): every subset's posterior.

  Args:
    finding_rule: how "Finding" is made from the labels (`labels.FINDING_RULES`).
    indices: int [n] sorted unique positions in the split (`DataSource.selected_batches`);
      None: every study.
    keep_complete: keep the batch rows (images, text, ``available``, ``index`` into the split)
      of the first this-many studies that have every modality of the model, for the grids.
    keep_logvar: keep the log-variances (generation needs them, the probes do not).
  """
  if indices is None:
    total = data.num_examples(split)
    batches = data.eval_batches(split, batch_size=batch_size, process_index=0, process_count=1)
  else:
    indices = np.asarray(indices, np.int64)
    total = indices.size
    batches = data.selected_batches(split, indices, batch_size=batch_size)
  columns = [DATA_MODALITIES.index(m) for m in model.modalities]
  parts, kept = [], []
  seen, start, log_every = 0, time.perf_counter(), None
  for batch in batches:
    rows = np.flatnonzero(batch["valid"])[: max(total - seen, 0)]
    if rows.size == 0:
      break
    mu_k, logvar_k, valid = jax.device_get(
      posteriors(model, variables, model_batch(batch, model.modalities))
    )
    available = batch["available"][:, columns]
    parts.append(
      (
        mu_k[:, rows],
        logvar_k[:, rows] if keep_logvar else None,
        valid[rows],
        available[rows],
        batch["labels"][rows],
      )
    )
    if len(kept) < keep_complete:
      complete = rows[available[rows].all(axis=1)][: keep_complete - len(kept)]
      for i in complete:
        row = seen + int(np.searchsorted(rows, i))  # row of this pass
        kept.append(
          {
            **{m: batch[m][i] for m in model.modalities},
            "available": available[i],
            "index": row if indices is None else int(indices[row]),
          }
        )
    seen += rows.size
    log_every = log_every or max(1, (total // rows.size) // 10 if rows.size else 1)
    if len(parts) % log_every == 0 or seen >= total:
      elapsed = time.perf_counter() - start
      logging.info(
        "Encoded %d/%d studies of %s (%.0f studies/s, ETA %.0f s).",
        seen,
        total,
        split,
        seen / elapsed,
        (total - seen) * elapsed / max(seen, 1),
      )
    if seen >= total:
      break
  if not parts:
    raise ValueError(f"Split {split!r} of {data.name} has no studies to evaluate.")
  mu_k, logvar_k, valid, available, labels = (
    np.concatenate(p, axis=1 if i < 2 else 0) if p[0] is not None else None
    for i, p in enumerate(zip(*parts))
  )
  if indices is not None and valid.shape[0] != indices.size:
    raise RuntimeError(
      f"Asked for {indices.size} studies of split {split!r} of {data.name}, "
      f"got {valid.shape[0]}; the data source's selected_batches is broken."
    )
  studies = {k: np.stack([s[k] for s in kept]) for k in kept[0]} if kept else {}
  return EncodedSplit(
    split=split,
    mu_k=mu_k,
    logvar_k=logvar_k,
    valid=valid,
    available=available,
    labels=labels,
    finding_rule=finding_rule,
    indices=(np.arange(valid.shape[0], dtype=np.int64) if indices is None else indices),
    studies=studies,
  )


# ------------------------------------------------------------------------------------------------
# The context of one evaluation.


@dataclasses.dataclass
class Context:
  """One evaluation: what every evaluator reads, and the test split encoded once."""

  config: ml_collections.ConfigDict  # the run's config (data, model, eval, classifier)
  model: MoPoE
  variables: Any  # restored {'params', 'batch_stats'}
  data: DataSource
  eval_dir: str  # outputs go here
  workdir: str
  rng: jax.Array  # the evaluation's key; `rng_for` derives each evaluator's
  step: int = 0
  keep_complete: int = 0  # complete test studies whose batch rows `test` keeps (for grids)
  images: dict = dataclasses.field(default_factory=dict)  # name -> uint8 [H, W, 3] grids
  _test: EncodedSplit | None = None

  # The keys of these three: split(eval key, 3) in this order, as earlier versions drew them (so
  # their results do not change); any other evaluator folds the CRC-32 of its name into the key.
  _RNG_ORDER: ClassVar[tuple[str, ...]] = ("generation", "coherence", "likelihood")

  def rng_for(self, evaluator: str) -> jax.Array:
    """The key of ``evaluator`` (its name): the same for the same ``eval.seed``."""
    if evaluator in self._RNG_ORDER:
      return jax.random.split(self.rng, len(self._RNG_ORDER))[self._RNG_ORDER.index(evaluator)]
    return jax.random.fold_in(self.rng, zlib.crc32(evaluator.encode()))

  @property
  def subset_names(self) -> list[str]:
    return subsets_lib.subset_names(self.model.modalities, self.model.mask)

  def test(self) -> EncodedSplit:
    """The test split's posteriors (with log-variances and the first complete studies)."""
    if self._test is None:
      self._test = encode_split(
        self.model,
        self.variables,
        self.data,
        self.config.data.test_split,
        batch_size=self.config.eval.batch_size,
        finding_rule=self.config.data.finding_rule,
        keep_complete=self.keep_complete,
      )
    return self._test


# ------------------------------------------------------------------------------------------------
# Results and evaluators.


class Result:
  """An evaluator's typed result: a dataclass whose fields are its entry in results.json.

  ``to_json()`` is `dataclasses.asdict` (nested dataclasses become dicts, field order kept),
  without the fields of ``OMIT_IF_NONE`` that are None (entries an evaluator writes only when it
  has them).
  """

  OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ()

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    for name in self.OMIT_IF_NONE:
      if out[name] is None:
        del out[name]
    return out


class Evaluator(abc.ABC):
  """One evaluator of a trained model: what `mopoe_jax.evaluation.evaluate` knows of it.

  Its settings are the section ``config.eval.<name>`` (`default_config` gives the fields and
  their defaults; a config without the section runs with them), checked by `check` before any
  evaluator runs. ``run`` measures and returns a `Result` (its entry in results.json; it may
  write files under ``ctx.eval_dir`` and put image grids in ``ctx.images``); `summary_scalars`
  are its TensorBoard scalars and `markdown` its section of report.md. Register an instance in
  `mopoe_jax.evaluation.registry`.
  """

  name: ClassVar[str]  # its entry in eval.evaluators and results.json, its config section

  def default_config(self) -> ml_collections.ConfigDict:
    """The fields of ``config.eval.<name>`` and their defaults."""
    return ml_collections.ConfigDict()

  def check(self, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field when ``config`` (whose ``eval.<name>`` section has
    exactly the fields of `default_config`) asks for something this evaluator cannot do."""
    del config

  def test_studies_kept(self, config: ml_collections.ConfigDict) -> int:
    """How many complete test studies' batch rows `Context.test` must keep for this evaluator
    (images and reports shown beside generated ones); the test split is encoded once for all."""
    del config
    return 0

  @abc.abstractmethod
  def run(self, ctx: Context) -> Result:
    """Measures the model of ``ctx``."""

  def summary_scalars(self, result: Result) -> dict[str, float | None]:
    """The headline numbers of ``result`` for TensorBoard (None values are left out)."""
    del result
    return {}

  @abc.abstractmethod
  def markdown(self, result: Result, settings: dict) -> str:
    """The section of report.md (``settings``: results.json's "settings" entry)."""


# ------------------------------------------------------------------------------------------------
# Scores, tables and JSON.


def class_problem(y: np.ndarray, split: str) -> str | None:
  """Why the labels ``y`` [N] cannot be scored by average precision, or None."""
  positives = int(y.sum())
  negatives = int(y.size - positives)
  if positives < MIN_CLASS_EXAMPLES or negatives < MIN_CLASS_EXAMPLES:
    return (
      f"n/a ({positives} positive and {negatives} negative studies in the {split} split; "
      f"at least {MIN_CLASS_EXAMPLES} of each needed)"
    )
  return None


def fmt(value, std=None, digits: int = 3) -> str:
  if value is None:
    return "n/a"
  text = f"{value:.{digits}f}"
  return text if not std else f"{text} ± {std:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def nanmean(values: Sequence[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def jsonable(value):
  """numpy scalars/arrays -> Python; NaN / inf -> None (strict JSON)."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, (np.floating, float)):
    return float(value) if np.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_json(path: str, value) -> None:
  """Writes ``value`` as JSON to ``path`` (local or a URI: `mopoe_jax.platform.paths`)."""
  paths.write_text(path, json.dumps(jsonable(value), indent=1, allow_nan=False))
