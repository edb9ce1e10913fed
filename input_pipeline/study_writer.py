"""Writing the studies of a manual-download builder (mimic_cxr, iu_xray).

A builder reads its collection and selects studies (`SelectedStudy`: the candidate images of
each view, best first, the report's text, the labels), listing every study its rule left out as
a `SkipRow`. `SplitWriter.examples` then loads the images in a thread pool (for each view the
first candidate that decodes is used), yields the examples in the layout of
``input_pipeline.features``, and at the end of the split writes ``skip_report_<split>.csv``
beside the dataset, logs the counts and keeps them in ``info.metadata["skipped"]``.

The vocabulary (``info.metadata["vocabulary"]``) is built from the reports of the train studies
that are written, so a study whose images then fail adds no words: the train split is loaded in
full before its first example is yielded (its images wait in a temporary file meanwhile), and it
must be written before the other splits, which tfds does in the order the builder returns them.

Nothing vanishes silently: every study that is not written and every file that could not be used
is one row of the skip report; the reasons and outcomes are the constants below.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import functools
import gzip
import io
import math
import os
import tempfile
import time
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np

from input_pipeline import features
from mopoe_jax.data import images
from mopoe_jax.data import report_text as reports
from mopoe_jax.data import text as text_lib

# Reasons in the skip report.
NO_FRONTAL = "no_frontal"  # no image of a frontal view listed
NO_LATERAL = "no_lateral"  # no image of a lateral view listed
REPORT_MISSING = "report_missing"  # no report for the study
SECTION_EMPTY = "section_empty"  # the report has no (non-empty) configured section
NO_MODALITY = "no_modality"  # all_studies: nothing usable left
IMAGE_MISSING = "image_missing"  # listed, but no file
IMAGE_UNREADABLE = "image_unreadable"  # the file does not decode (truncated, corrupt)
LABELS_MISSING = "labels_missing"  # no labels for the study: labels all NaN
# Outcomes in the skip report.
STUDY_SKIPPED = "study_skipped"  # the study is not in the dataset
MODALITY_UNAVAILABLE = "modality_unavailable"  # written with that modality marked unavailable
OTHER_IMAGE_USED = "other_image_used"  # a later image of the same view was used
NOT_USED = "not_used"  # the file plays no part (e.g. its view unknown)
KEPT = "kept"  # written as it is (labels_missing)

# Selection modes.
PAPER = "paper"  # frontal, lateral and a non-empty section; all three must load
ALL_STUDIES = "all_studies"  # every study with at least one usable modality
SELECTIONS = (PAPER, ALL_STUDIES)

# The tfds splits, in the order they are written.
SPLITS = ("train", "validation", "test")
# The split whose written reports give the vocabulary.
VOCABULARY_SPLIT = "train"


@dataclasses.dataclass(frozen=True)
class ImageFile:
  image_id: str  # MIMIC: the dicom_id; IU: the image's file name stem
  path: str  # where the builder's image loader finds it


@dataclasses.dataclass(frozen=True)
class CandidateStudy:
  """A study of the collection with its candidate images of each view, best first."""

  study_id: str
  subject_id: str
  frontal: tuple[ImageFile, ...]
  lateral: tuple[ImageFile, ...]


@dataclasses.dataclass(frozen=True)
class SelectedStudy:
  """A study that passed the selection; its images are loaded while the split is written."""

  study_id: str
  subject_id: str
  frontal: tuple[ImageFile, ...]
  lateral: tuple[ImageFile, ...]
  text: str  # the lower-cased section; "" where the text is unavailable
  text_source: str  # "findings", "impression" or ""
  report_missing: bool  # no report (all_studies; listed in the skip report)
  labels: np.ndarray | None  # float32 [14]; None where the study has no labels


@dataclasses.dataclass(frozen=True)
class SkipRow:
  split: str
  subject_id: str
  study_id: str
  image_id: str  # "" where the row is about the study or its report
  reason: str
  outcome: str


def select_split(
  split: str,
  studies: Sequence[CandidateStudy],
  read_texts: Callable[[Sequence[CandidateStudy]], list[tuple[str, str] | None]],
  labels: Mapping[str, np.ndarray],
  selection: str,
) -> tuple[list[SelectedStudy], list[SkipRow], tuple[int, int]]:
  """Applies the selection rule to the studies of one split.

  Args:
    split: the tfds split name (for the skip rows).
    studies: the split's studies, in the order they are written.
    read_texts: the (text, source) of each study's configured section (`reports.section_text`),
      or None where the study has no report; called once, only for the studies that need it
      (under the paper rule, those with a frontal and a lateral image).
    labels: study_id -> float32 [14]; a study without an entry gets None (labels_missing).
    selection: PAPER or ALL_STUDIES.

  Returns:
    (selected, skipped, (reports wanted, reports found)): the studies to write, in order; a
    SkipRow for every study the rule excluded (a missing report of a selected study is listed
    when the split is written, with its outcome).
  """
  if selection not in SELECTIONS:
    raise ValueError(f"Unknown selection {selection!r}; expected one of {SELECTIONS}.")
  selected, skipped = [], []

  def skip(study: CandidateStudy, reason: str) -> None:
    skipped.append(SkipRow(split, study.subject_id, study.study_id, "", reason, STUDY_SKIPPED))

  if selection == PAPER:
    with_images = []
    for study in studies:
      if not study.frontal:
        skip(study, NO_FRONTAL)
      elif not study.lateral:
        skip(study, NO_LATERAL)
      else:
        with_images.append(study)
    studies = with_images
  texts = read_texts(studies)
  for study, found in zip(studies, texts):
    text, source = found if found is not None else ("", "")
    if selection == PAPER and not text:
      skip(study, REPORT_MISSING if found is None else SECTION_EMPTY)
      continue
    if selection == ALL_STUDIES and not (study.frontal or study.lateral or text):
      skip(study, NO_MODALITY)
      continue
    selected.append(
      SelectedStudy(
        study_id=study.study_id,
        subject_id=study.subject_id,
        frontal=study.frontal,
        lateral=study.lateral,
        text=text,
        text_source=source,
        report_missing=found is None,
        labels=labels.get(study.study_id),
      )
    )
  return selected, skipped, (len(studies), sum(t is not None for t in texts))


def check_config(config) -> None:
  """Raises ValueError for a builder config field (common to the manual-download builders) out
  of range: image_size, text_length, selection, section, min_count, num_workers."""
  if config.image_size < 1:
    raise ValueError(f"image_size must be positive, got {config.image_size}.")
  if config.text_length < 2:
    raise ValueError(
      f"text_length must be at least 2 (one word and <eos>), got {config.text_length}."
    )
  if config.selection not in SELECTIONS:
    raise ValueError(f"Unknown selection {config.selection!r}; expected one of {SELECTIONS}.")
  if config.section not in reports.SECTIONS:
    raise ValueError(f"Unknown section {config.section!r}; expected one of {reports.SECTIONS}.")
  if config.min_count < 0:
    raise ValueError(f"min_count must be >= 0, got {config.min_count}.")
  if config.num_workers is not None and config.num_workers < 1:
    raise ValueError(f"num_workers must be positive or None, got {config.num_workers}.")


def read_csv(path: epath.Path, required: Sequence[str], fix: str) -> Iterator[dict[str, str]]:
  """Rows of a CSV (gzipped where the name ends in .gz) as dicts.

  Raises:
    ValueError: a required column is missing (naming the file and the column), or the file is
      not a readable (gzipped) CSV; the message ends with ``fix``, what the user should do.
  """
  with path.open("rb") as raw:
    if path.name.endswith(".gz"):
      stream = gzip.open(raw, "rt", encoding="utf-8-sig", newline="")
    else:
      stream = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    with stream:
      try:
        reader = csv.DictReader(stream)
        header = reader.fieldnames or []
        for column in required:
          if column not in header:
            raise ValueError(f"{path}: missing column {column!r} (columns found: {header}). {fix}")
        yield from reader
      except (OSError, EOFError, csv.Error, UnicodeDecodeError) as e:
        raise ValueError(
          f"{path} is not a readable CSV{' (gzip)' if path.name.endswith('.gz') else ''}: "
          f"{type(e).__name__}: {e}. {fix}"
        ) from e


def default_num_workers() -> int:
  return min(32, 2 * (os.cpu_count() or 1))


def load_from_path(image: ImageFile, size: int) -> np.ndarray:
  """The default image loader: `mopoe_jax.data.images.load_image` of the file at ``image.path``."""
  return images.load_image(image.path, size)


def make_example(
  study: SelectedStudy,
  split: str,
  image_size: int,
  require_all: bool,
  load_image: Callable[[ImageFile, int], np.ndarray] = load_from_path,
) -> tuple[dict | None, dict[str, str], list[SkipRow]]:
  """Loads one selected study: (the example or None where it is skipped, the image id used per
  view, its skip rows). The example lacks "text", the word ids, which need the vocabulary
  (`SplitWriter` adds them).

  For each view the candidates are tried in order; the first that decodes is used. With
  ``require_all`` (the paper selection) a study lacking any modality is skipped; otherwise the
  missing modality is marked unavailable (zeros / all <pad>), and only a study left with no
  modality at all is skipped. ``load_image`` raises FileNotFoundError for an absent file and one
  of `mopoe_jax.data.images.IMAGE_ERRORS` for one that does not decode.
  """

  def row(image_id: str, reason: str, outcome: str) -> SkipRow:
    return SkipRow(split, study.subject_id, study.study_id, image_id, reason, outcome)

  rows = []
  loaded, used = {}, {}
  for view, candidates in (("frontal", study.frontal), ("lateral", study.lateral)):
    failures = []
    for image in candidates:
      try:
        loaded[view] = load_image(image, image_size)
      except FileNotFoundError:
        failures.append((image.image_id, IMAGE_MISSING))
      except images.IMAGE_ERRORS as e:
        logging.warning(
          "Study %s: cannot decode %s (%s: %s).", study.study_id, image.path, type(e).__name__, e
        )
        failures.append((image.image_id, IMAGE_UNREADABLE))
      else:
        used[view] = image.image_id
        break
    outcome = OTHER_IMAGE_USED if view in loaded else MODALITY_UNAVAILABLE
    rows.extend(row(image_id, reason, outcome) for image_id, reason in failures)
  if study.report_missing:
    rows.append(row("", REPORT_MISSING, MODALITY_UNAVAILABLE))

  available = np.asarray(["frontal" in loaded, "lateral" in loaded, bool(study.text)])
  if not available.any() or (require_all and not available.all()):
    rows = [
      dataclasses.replace(r, outcome=STUDY_SKIPPED) if r.outcome == MODALITY_UNAVAILABLE else r
      for r in rows
    ]
    if not rows:  # all_studies: nothing was listed, nothing could be used.
      rows.append(row("", NO_MODALITY, STUDY_SKIPPED))
    return None, used, rows

  if study.labels is None:
    labels = np.full((len(features.LABELS),), np.nan, dtype=np.float32)
    rows.append(row("", LABELS_MISSING, KEPT))
  else:
    labels = study.labels
  blank = np.zeros((image_size, image_size, 1), dtype=np.uint8)
  example = {
    "frontal": loaded.get("frontal", blank),
    "lateral": loaded.get("lateral", blank),
    "report": study.text,
    "available": available,
    "labels": labels,
    "finding": features.finding_from_labels(labels),
    "study_id": study.study_id,
  }
  return example, used, rows


def ordered_map(
  pool: concurrent.futures.Executor,
  fn: Callable,
  items: Iterable,
  window: int,
) -> Iterator:
  """fn over items in the pool, results in input order, at most ``window`` in flight."""
  pending = collections.deque()
  for item in items:
    pending.append(pool.submit(fn, item))
    if len(pending) >= window:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()


def write_skip_report(path: epath.Path, rows: Iterable[SkipRow], header: tuple[str, ...]) -> None:
  """Writes the skip report CSV: ``header`` names SkipRow's six fields in their order."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  for r in rows:
    writer.writerow(dataclasses.astuple(r))
  path.write_text(buffer.getvalue())


class SplitWriter:
  """Writes the splits of one build of a builder, builds its vocabulary and keeps the counts.

  The vocabulary holds the words of the reports of the VOCABULARY_SPLIT studies written, seen
  more than ``builder_config.min_count`` times (`mopoe_jax.data.text.Vocabulary.build`); it is
  stored in ``info.metadata["vocabulary"]`` once that split is loaded.

  Args:
    builder: the tfds builder being prepared (its data_dir, info and builder_config are used).
    family: the dataset's name in log lines ("mimic_cxr").
    skip_report_header: the skip report's column names for SkipRow's six fields.
    extra_features: (study, image id used per view) -> the builder's own features of a study.
    load_image: (ImageFile, size) -> uint8 [size, size, 1] (`make_example`).
  """

  def __init__(
    self,
    builder,
    family: str,
    skip_report_header: tuple[str, ...],
    extra_features: Callable[[SelectedStudy, dict[str, str]], dict],
    load_image: Callable[[ImageFile, int], np.ndarray] = load_from_path,
  ):
    self._builder = builder
    self._family = family
    self._header = skip_report_header
    self._extra_features = extra_features
    self._load_image = load_image
    self._summaries = {}
    self.vocabulary: text_lib.Vocabulary | None = None
    builder.info.metadata["skipped"] = {}

  def examples(
    self,
    split: str,
    studies: list[SelectedStudy],
    skipped: list[SkipRow],
    listed: int,
    num_workers: int,
  ):
    """Yields (study_id, example) in the order of ``studies``; images load in a thread pool.

    VOCABULARY_SPLIT is loaded in full before its first example is yielded (the vocabulary is
    built from the studies written); the other splits stream, and need that vocabulary.
    """
    if split != VOCABULARY_SPLIT and self.vocabulary is None:
      raise RuntimeError(
        f"{self._family}: the {VOCABULARY_SPLIT!r} split must be written before {split!r}: the "
        "reports it writes give the vocabulary."
      )
    text_length = self._builder.builder_config.text_length
    rows = list(skipped)
    written = 0
    available = np.zeros(len(features.MODALITIES), dtype=np.int64)
    impression = 0
    try:
      loaded = self._load(split, studies, rows, num_workers)
      if split == VOCABULARY_SPLIT:
        loaded = self._build_vocabulary(loaded)
      for study, example, used in loaded:
        written += 1
        available += example["available"]
        impression += study.text_source == "impression"
        if study.text:
          example["text"] = self.vocabulary.encode(study.text, text_length)
        else:
          example["text"] = np.full((text_length,), text_lib.PAD_ID, dtype=np.int32)
        example.update(self._extra_features(study, used))
        yield study.study_id, example
    finally:
      self._finish_split(split, rows, listed, written, available, impression)

  def _load(self, split, studies, rows, num_workers):
    """(study, example without "text", image id used per view) of the studies written, in
    order; the skip rows of every study go to ``rows``."""
    config = self._builder.builder_config
    load = functools.partial(
      make_example,
      split=split,
      image_size=config.image_size,
      require_all=config.selection == PAPER,
      load_image=self._load_image,
    )
    start = last_log = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
      results = ordered_map(pool, load, studies, window=4 * num_workers)
      for done, (study, (example, used, study_rows)) in enumerate(zip(studies, results), start=1):
        rows.extend(study_rows)
        if example is not None:
          yield study, example, used
        now = time.monotonic()
        if now - last_log >= 30 or done == len(studies):
          last_log = now
          rate = done / max(now - start, 1e-9)
          logging.info(
            "%s %s: %d/%d studies loaded (%.0f/s, ETA %.0f s).",
            self._family,
            split,
            done,
            len(studies),
            rate,
            (len(studies) - done) / rate,
          )

  def _build_vocabulary(self, loaded):
    """Loads every study of ``loaded``, builds the vocabulary from the reports of those written,
    then yields them again. Meanwhile their images wait in a temporary file (2 x S x S bytes a
    study) beside the dataset being written, or in the system's temporary directory where the
    data_dir is not a local one."""
    config = self._builder.builder_config
    shape = (config.image_size, config.image_size, 1)
    record = 2 * math.prod(shape)
    data_dir = os.fspath(self._builder.data_dir)
    held = collections.deque()
    with tempfile.TemporaryFile(
      prefix="study_images_", dir=data_dir if os.path.isdir(data_dir) else None
    ) as spill:
      for study, example, used in loaded:
        for view in ("frontal", "lateral"):
          image = example.pop(view)
          if image.shape != shape or image.dtype != np.uint8:
            raise ValueError(
              f"Study {study.study_id}: the {view} image is {image.dtype} {image.shape}; "
              f"expected uint8 {shape}."
            )
          spill.write(np.ascontiguousarray(image).tobytes())
        held.append((study, example, used))
      texts = [example["report"] for _, example, _ in held if example["report"]]
      self.vocabulary = text_lib.Vocabulary.build(texts, min_count=config.min_count)
      self._builder.info.metadata["vocabulary"] = self.vocabulary.words
      logging.info(
        "%s: vocabulary of %d words from the %d reports of the %s studies written (words seen "
        "more than %d times).",
        self._family,
        len(self.vocabulary),
        len(texts),
        VOCABULARY_SPLIT,
        config.min_count,
      )
      spill.seek(0)
      while held:
        study, example, used = held.popleft()
        data = spill.read(record)
        if len(data) != record:
          raise OSError(f"The temporary image file ended early at study {study.study_id}.")
        frontal, lateral = np.frombuffer(data, dtype=np.uint8).reshape((2,) + shape)
        example["frontal"], example["lateral"] = frontal, lateral
        yield study, example, used

  def _finish_split(self, split, rows, listed, written, available, impression) -> None:
    """Writes the skip report, logs the counts, keeps them in the metadata."""
    builder = self._builder
    path = epath.Path(builder.data_dir) / f"skip_report_{split}.csv"
    write_skip_report(path, rows, self._header)
    # While tfds writes, data_dir is a temporary sibling of the final version directory.
    final_path = path.parent.parent / str(builder.info.version) / path.name
    counts = collections.Counter(f"{r.reason}/{r.outcome}" for r in rows)
    skipped_studies = len({r.study_id for r in rows if r.outcome == STUDY_SKIPPED})
    builder.info.metadata["skipped"][split] = {
      "listed": listed,
      "written": written,
      "skipped_studies": skipped_studies,
      "counts": dict(sorted(counts.items())),
    }
    name = f"{self._family}/{builder.builder_config.name}"
    logging.info(
      "%s %s: wrote %d of %d studies (available: frontal %d, lateral %d, text %d; text from "
      "IMPRESSION %d); skipped %d studies; skip report rows by reason/outcome: %s; skip "
      "report: %s",
      name,
      split,
      written,
      listed,
      *available.tolist(),
      impression,
      skipped_studies,
      dict(sorted(counts.items())) or "none",
      final_path,
    )
    self._summaries[split] = (written, listed, counts)
    if len(self._summaries) == len(SPLITS):
      total = sum((c for _, _, c in self._summaries.values()), collections.Counter())
      logging.info(
        "%s build done: wrote %s studies; skip report rows by reason/outcome: %s.",
        name,
        ", ".join(f"{s} {w} of {n}" for s, (w, n, _) in self._summaries.items()),
        dict(sorted(total.items())) or "none",
      )
