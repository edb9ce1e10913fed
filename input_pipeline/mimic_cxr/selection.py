"""Which MIMIC-CXR studies make the dataset: the PhysioNet CSVs, the reports, the selection rule.

Inputs (all in the manual dir, see the builder's MANUAL_DOWNLOAD_INSTRUCTIONS):
  files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg   MIMIC-CXR-JPG images (XX = subject id's first 2 digits)
  mimic-cxr-2.0.0-metadata.csv.gz          one row per image: view position, study date and time
  mimic-cxr-2.0.0-chexpert.csv.gz          one row per study: 14 labels (1 / 0 / -1 / blank)
  mimic-cxr-2.0.0-negbio.csv.gz            the same columns, labelled by NegBio
  mimic-cxr-2.0.0-split.csv.gz             one row per image: train / validate / test
  mimic-cxr-reports.zip                    files/pXX/pSUBJECT/sSTUDY.txt (or unpacked into files/)

Selection modes:
  paper        a PA image, a lateral image (LATERAL or LL) and a non-empty report section; all
               three must load, otherwise the study is skipped.
  all_studies  every study with at least one usable modality; the others are marked unavailable.

Several images of one view in a study: the candidates are ordered by (StudyDate, StudyTime,
dicom_id), blank dates and times last, and the first that decodes is used; the ones before it
that fail are listed in the skip report (outcome ``other_image_used``).

Every study of a split that does not end up in the dataset, and every listed file that could not
be used, is one row of the skip report (split, subject_id, study_id, dicom_id, reason, outcome).
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
from typing import Iterator, Sequence
import zipfile

from absl import logging
from etils import epath
import numpy as np

from input_pipeline import features, study_writer
from input_pipeline.study_writer import CandidateStudy, ImageFile, SelectedStudy, SkipRow
from mopoe_jax.data import report_text as reports

# Files of the manual dir.
FILES_DIR = "files"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO_CSV = "mimic-cxr-2.0.0-negbio.csv.gz"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
REPORTS_ZIP = "mimic-cxr-reports.zip"
LABEL_CSVS = {"chexpert": CHEXPERT_CSV, "negbio": NEGBIO_CSV}

JPG_URL = "https://physionet.org/content/mimic-cxr-jpg/2.0.0/"
REPORTS_URL = "https://physionet.org/content/mimic-cxr/2.0.0/"
_WHERE = {
  FILES_DIR: f"the image tree of MIMIC-CXR-JPG 2.0.0 ({JPG_URL})",
  METADATA_CSV: f"MIMIC-CXR-JPG 2.0.0 ({JPG_URL})",
  CHEXPERT_CSV: f"MIMIC-CXR-JPG 2.0.0 ({JPG_URL})",
  NEGBIO_CSV: f"MIMIC-CXR-JPG 2.0.0 ({JPG_URL})",
  SPLIT_CSV: f"MIMIC-CXR-JPG 2.0.0 ({JPG_URL})",
  REPORTS_ZIP: f"MIMIC-CXR 2.0.0 ({REPORTS_URL})",
}

# Columns the builder reads (the real files have more).
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS = ("subject_id", "study_id") + features.LABELS

# Split names of the split CSV -> tfds split names.
SPLITS = {"train": "train", "validate": "validation", "test": "test"}

# The skip report's columns: study_writer.SkipRow's fields, the image id named as in MIMIC.
SKIP_REPORT_COLUMNS = ("split", "subject_id", "study_id", "dicom_id", "reason", "outcome")


def check_manual_dir(manual_dir: epath.Path, label_source: str) -> dict[str, epath.Path]:
  """Paths of the required inputs; raises FileNotFoundError naming every one that is missing."""
  if label_source not in LABEL_CSVS:
    raise ValueError(f"Unknown label_source {label_source!r}; expected one of {tuple(LABEL_CSVS)}.")
  required = (FILES_DIR, METADATA_CSV, LABEL_CSVS[label_source], SPLIT_CSV)
  paths = {name: manual_dir / name for name in required}
  missing = [name for name, path in paths.items() if not path.exists()]
  if missing:
    lines = "\n".join(f"  {manual_dir / name}: from {_WHERE[name]}" for name in missing)
    raise FileNotFoundError(
      f"The MIMIC-CXR manual dir {manual_dir} lacks {', '.join(missing)}:\n{lines}\n"
      "Download them from PhysioNet (credentialed access) into the manual dir as described in "
      "mimic_cxr's MANUAL_DOWNLOAD_INSTRUCTIONS, then build again."
    )
  return paths


def read_csv(path: epath.Path, required: Sequence[str]) -> Iterator[dict[str, str]]:
  """Rows of a (gzipped) CSV of MIMIC-CXR-JPG as dicts (`study_writer.read_csv`)."""
  where = _WHERE.get(path.name, JPG_URL)
  return study_writer.read_csv(
    path,
    required,
    f"The builder reads the files of MIMIC-CXR-JPG 2.0.0 unchanged; download "
    f"{path.name} again from {where}.",
  )


def read_split(path: epath.Path) -> dict[str, tuple[str, str]]:
  """study_id -> (subject_id, tfds split name), from the split CSV."""
  studies = {}
  for row in read_csv(path, SPLIT_COLUMNS):
    split = SPLITS.get(row["split"])
    if split is None:
      raise ValueError(
        f"{path}: dicom_id {row['dicom_id']} has split {row['split']!r}; expected one of "
        f"{tuple(SPLITS)}."
      )
    study_id = row["study_id"]
    previous = studies.setdefault(study_id, (row["subject_id"], split))
    if previous[1] != split:
      raise ValueError(
        f"{path}: study {study_id} is in two splits, {previous[1]!r} and {split!r}; every "
        "image of a study must be in the same split. Download the file again."
      )
  return studies


def _label_value(value: str, path: epath.Path, study_id: str, column: str) -> float:
  if value == "":
    return math.nan
  try:
    number = float(value)
  except ValueError:
    number = None
  if number not in (1.0, 0.0, -1.0):
    raise ValueError(
      f"{path}: study {study_id}, column {column!r} has value {value!r}; expected 1.0, 0.0, "
      "-1.0 or empty. Download the file again."
    )
  return number


def read_labels(path: epath.Path) -> dict[str, np.ndarray]:
  """study_id -> float32 [14] labels in features.LABELS order (NaN where blank)."""
  labels = {}
  for row in read_csv(path, LABEL_COLUMNS):
    study_id = row["study_id"]
    labels[study_id] = np.asarray(
      [_label_value(row[c], path, study_id, c) for c in features.LABELS], dtype=np.float32
    )
  return labels


def image_path(files_dir: epath.Path, subject_id: str, study_id: str, dicom_id: str) -> str:
  return f"{files_dir}/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def _number(text: str) -> float:
  try:
    return float(text)
  except ValueError:
    return math.inf  # Blank or unreadable dates and times sort last.


def read_studies(
  metadata_path: epath.Path,
  split_of: dict[str, tuple[str, str]],
  files_dir: epath.Path,
  frontal_views: Sequence[str],
  lateral_views: Sequence[str],
) -> tuple[dict[str, list[CandidateStudy]], collections.Counter]:
  """The studies of each split with their frontal and lateral candidates, sorted by study id.

  Returns:
    (studies, counts): studies[tfds split] -> list of CandidateStudy; counts of metadata rows by
    view ("frontal", "lateral", "other_view") and "not_in_split" (rows whose study is not in
    the split CSV; ignored).
  """
  candidates = collections.defaultdict(lambda: ([], []))  # study_id -> (frontal, lateral)
  counts = collections.Counter()
  for row in read_csv(metadata_path, METADATA_COLUMNS):
    study_id = row["study_id"]
    if study_id not in split_of:
      counts["not_in_split"] += 1
      continue
    view = row["ViewPosition"].strip().upper()
    if view in frontal_views:
      index, counts["frontal"] = 0, counts["frontal"] + 1
    elif view in lateral_views:
      index, counts["lateral"] = 1, counts["lateral"] + 1
    else:
      counts["other_view"] += 1
      continue
    subject_id = split_of[study_id][0]
    key = (_number(row["StudyDate"]), _number(row["StudyTime"]), row["dicom_id"])
    path = image_path(files_dir, subject_id, study_id, row["dicom_id"])
    candidates[study_id][index].append((key, ImageFile(row["dicom_id"], path)))
  if counts["not_in_split"]:
    logging.warning(
      "%s: %d images of studies that are not in %s are ignored.",
      metadata_path,
      counts["not_in_split"],
      SPLIT_CSV,
    )

  studies = {split: [] for split in SPLITS.values()}
  for study_id in sorted(split_of, key=lambda s: (len(s), s)):
    subject_id, split = split_of[study_id]
    frontal, lateral = candidates.get(study_id, ([], []))
    studies[split].append(
      CandidateStudy(
        study_id=study_id,
        subject_id=subject_id,
        frontal=tuple(image for _, image in sorted(frontal, key=lambda c: c[0])),
        lateral=tuple(image for _, image in sorted(lateral, key=lambda c: c[0])),
      )
    )
  return studies, counts


class ReportReader:
  """Reads ``sSTUDY.txt`` reports from mimic-cxr-reports.zip if present, else from ``files/``.

  The zip is indexed by its members' last two path parts (``pSUBJECT/sSTUDY.txt``), so a zip
  whose tree starts with ``files/`` or with any other folder works. Reading is thread-safe.
  """

  def __init__(self, manual_dir: epath.Path):
    self.zip_path = manual_dir / REPORTS_ZIP
    self.files_dir = manual_dir / FILES_DIR
    self._zip = None
    self._index = {}
    if self.zip_path.exists():
      self._file = self.zip_path.open("rb")
      try:
        self._zip = zipfile.ZipFile(self._file)
      except zipfile.BadZipFile as e:
        self._file.close()
        raise ValueError(
          f"{self.zip_path} is not a readable zip file ({e}). Download mimic-cxr-reports.zip "
          f"again from {REPORTS_URL}, or delete it and unpack the reports into "
          f"{self.files_dir}."
        ) from e
      for name in self._zip.namelist():
        parts = name.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-1].endswith(".txt"):
          self._index[(parts[-2], parts[-1])] = name
      self.source = f"{self.zip_path} ({len(self._index)} reports)"
    else:
      self.source = f"{self.files_dir}/pXX/pSUBJECT/sSTUDY.txt"

  def read(self, subject_id: str, study_id: str) -> str | None:
    """The report of a study; None where there is none."""
    if self._zip is not None:
      name = self._index.get((f"p{subject_id}", f"s{study_id}.txt"))
      if name is None:
        return None
      return self._zip.read(name).decode("utf-8", errors="replace")
    path = self.files_dir / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}.txt"
    try:
      return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
      return None

  def close(self) -> None:
    if self._zip is not None:
      self._zip.close()
      self._file.close()
      self._zip = None


def _read_texts(
  studies: Sequence[CandidateStudy],
  reader: ReportReader,
  section: str,
  num_workers: int,
) -> list[tuple[str, str] | None]:
  """(text, source) of each study's configured section; None where the report is missing."""

  def read(study: CandidateStudy) -> tuple[str, str] | None:
    report = reader.read(study.subject_id, study.study_id)
    return None if report is None else reports.section_text(report, section)

  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    return list(pool.map(read, studies, chunksize=64))


def select_studies(
  studies: dict[str, list[CandidateStudy]],
  reader: ReportReader,
  labels: dict[str, np.ndarray],
  selection: str,
  section: str,
  num_workers: int,
) -> tuple[dict[str, list[SelectedStudy]], dict[str, list[SkipRow]]]:
  """Applies the selection rule to every split.

  Returns:
    (selected, skipped): selected[split] -> studies to write (in study id order);
    skipped[split] -> a SkipRow for every study the rule excluded (missing reports of selected
    studies are listed when the split is written, with their outcome).

  Raises:
    FileNotFoundError: not one report was found (neither the zip nor the unpacked reports).
  """
  if selection not in study_writer.SELECTIONS:
    raise ValueError(f"Unknown selection {selection!r}; expected one of {study_writer.SELECTIONS}.")
  selected, skipped = {}, {}
  reports_wanted = reports_found = 0
  for split, split_studies in studies.items():

    def read_texts(candidates: Sequence[CandidateStudy]) -> list[tuple[str, str] | None]:
      return _read_texts(candidates, reader, section, num_workers)

    selected[split], skipped[split], (wanted, found) = study_writer.select_split(
      split, split_studies, read_texts, labels, selection
    )
    reports_wanted += wanted
    reports_found += found
  if reports_wanted and not reports_found:
    raise FileNotFoundError(
      f"Found no report for any of the {reports_wanted} studies: neither "
      f"{reader.zip_path} nor {reader.files_dir}/pXX/pSUBJECT/sSTUDY.txt exist. Download "
      f"{REPORTS_ZIP} from MIMIC-CXR 2.0.0 ({REPORTS_URL}) into the manual dir (or unpack "
      f"its files/ tree into {reader.files_dir}), then build again."
    )
  return selected, skipped
