"""Reading the Indiana University chest X-ray collection (Open-i) from a manual dir.

Inputs (see the builder's MANUAL_DOWNLOAD_INSTRUCTIONS):
  NLMCXR_reports.tgz, or its folder ecgen-radiology/   one XML report per study: N.xml
  NLMCXR_png.tgz, or its PNGs (<= 2 folders deep)     CXR<N>_<...>_IM-<series>-<image>.png
  indiana_projections.csv                              the view of each image: Frontal / Lateral

A report (``ecgen-radiology/<N>.xml``) gives the study: its id N, the sections
(``<AbstractText Label="FINDINGS">``, ``IMPRESSION``, ...), the MeSH major terms (labels,
`mesh_labels`) and its images (``<parentImage id="CXR<N>_...">``). The PNG archive carries no
view: the projections table decides (the widely used one of the Kaggle copy of the collection,
columns ``uid, filename, projection``; file names as in the PNG archive or in that copy's
``<N>_IM-....dcm.png`` form). An image that the table does not list, or lists with another
projection, is not used ("view_unknown" in the skip report).

The collection has one examination per patient (the DICOM headers' Patient ID is the report
number), so the patient-level split is made per report. It is deterministic:
a report goes to train, validation or test by a hash of the split seed and its id against the
split fractions, so it stays in its split when other reports are added or removed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gzip
import hashlib
import io
import re
import tarfile
import time
from typing import Callable, Iterator, Sequence
import zlib

from absl import logging
from etils import epath
import numpy as np

from input_pipeline import study_writer
from input_pipeline.study_writer import CandidateStudy, ImageFile, SkipRow
from mopoe_jax.data import images
from mopoe_jax.data import report_text as reports

# Files of the manual dir.
REPORTS_TGZ = "NLMCXR_reports.tgz"
REPORTS_DIR = "ecgen-radiology"
PNG_TGZ = "NLMCXR_png.tgz"
PROJECTIONS_CSV = "indiana_projections.csv"

OPEN_I_URL = "https://openi.nlm.nih.gov/faq#collection"
REPORTS_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz"
PNG_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_png.tgz"
PROJECTIONS_URL = "https://www.kaggle.com/datasets/raddar/chest-xrays-indiana-university"

PROJECTIONS_COLUMNS = ("filename", "projection")
PROJECTION_VIEWS = {"frontal": "frontal", "lateral": "lateral"}

# Reasons in the skip report, beside study_writer's.
REPORT_UNREADABLE = "report_unreadable"  # the XML does not parse: the study is skipped
VIEW_UNKNOWN = "view_unknown"  # the projections table does not say frontal / lateral

# The skip report's columns: study_writer.SkipRow's fields. The patient (subject_id) is the
# report number, as the study id; the image is the file name without ".png".
SKIP_REPORT_COLUMNS = ("split", "subject_id", "study_id", "image", "reason", "outcome")

# What a damaged .tgz raises while it is read (truncated: EOFError; corrupt: zlib.error, or
# gzip.BadGzipFile, an OSError).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)

_IMAGE_SUFFIXES = (".dcm.png", ".png")
# Unpacked PNGs are looked for this many folders deep in the manual dir (e.g. the Kaggle copy's
# images/images_normalized/).
PNG_DEPTH = 2
_CXR_PREFIX = re.compile(r"^CXR", re.IGNORECASE)
_REPEATED_NUMBER = re.compile(r"^(\d+)_\1_")


@dataclasses.dataclass(frozen=True)
class Report:
  """What one XML report says."""

  study_id: str  # N of ecgen-radiology/N.xml
  sections: tuple[tuple[str, str], ...]  # (upper-case label, whitespace-normalised text)
  majors: tuple[str, ...]  # MeSH major terms, as written
  has_mesh: bool  # the report has a <MeSH> element
  images: tuple[str, ...]  # parentImage ids, e.g. "CXR1_1_IM-0001-3001"


def image_key(name: str) -> str:
  """The key that matches one image across the XML, the archive and the projections table:
  the file name without folder, ``.png`` / ``.dcm.png`` and the ``CXR`` prefix.

  'CXR2_IM-0652-1001' (XML), 'NLMCXR_png/CXR2_IM-0652-1001.png' (archive) and
  '2_IM-0652-1001.dcm.png' (table, and the DICOM archive's name) all give '2_IM-0652-1001'.
  Report 1's images alone carry the report number twice in the XML and the PNG archive
  ('CXR1_1_IM-0001-3001') and once in the table: the repetition is dropped.
  """
  base = name.replace("\\", "/").rsplit("/", 1)[-1]
  for suffix in _IMAGE_SUFFIXES:
    if base.lower().endswith(suffix):
      base = base[: -len(suffix)]
      break
  return _REPEATED_NUMBER.sub(r"\1_", _CXR_PREFIX.sub("", base))


# ------------------------------------------------------------------------------------------------
# The manual dir.


@dataclasses.dataclass(frozen=True)
class Sources:
  """Where each input of the manual dir is."""

  reports: epath.Path  # the .tgz, or the ecgen-radiology folder
  images: epath.Path  # the .tgz, or the manual dir (PNGs up to PNG_DEPTH folders down)
  projections: epath.Path

  @property
  def reports_archived(self) -> bool:
    return self.reports.name.endswith(".tgz")

  @property
  def images_archived(self) -> bool:
    return self.images.name.endswith(".tgz")


def find_sources(manual_dir: epath.Path, projections_csv: str = PROJECTIONS_CSV) -> Sources:
  """The inputs in ``manual_dir``; raises FileNotFoundError naming every one that is missing."""
  missing = []
  if (manual_dir / REPORTS_TGZ).exists():
    reports_source = manual_dir / REPORTS_TGZ
  elif (manual_dir / REPORTS_DIR).is_dir():
    reports_source = manual_dir / REPORTS_DIR
  else:
    reports_source = None
    missing.append(f"  {REPORTS_TGZ} (or its folder {REPORTS_DIR}/): the reports, {REPORTS_URL}")
  if (manual_dir / PNG_TGZ).exists():
    images_source = manual_dir / PNG_TGZ
  elif any(True for _ in png_files(manual_dir)):
    images_source = manual_dir
  else:
    images_source = None
    missing.append(
      f"  {PNG_TGZ} (or its PNG files, unpacked into the manual dir or at most "
      f"{PNG_DEPTH} folders down): "
      f"the images, {PNG_URL}"
    )
  projections = manual_dir / projections_csv
  if not projections.exists():
    missing.append(
      f"  {projections_csv}: the view of each image (columns filename, "
      f"projection), e.g. indiana_projections.csv of {PROJECTIONS_URL}"
    )
  if missing:
    raise FileNotFoundError(
      f"The Indiana University (Open-i) manual dir {manual_dir} lacks:\n"
      + "\n".join(missing)
      + "\nDownload them into the manual dir as described in iu_xray's "
      "MANUAL_DOWNLOAD_INSTRUCTIONS, then build again."
    )
  return Sources(reports_source, images_source, projections)


# ------------------------------------------------------------------------------------------------
# Reports.


def parse_report(study_id: str, xml: bytes) -> Report:
  """One XML report; raises ValueError where it does not parse."""
  root = reports.parse_xml(xml)
  sections = reports.xml_sections(root)
  mesh = root.find("MeSH")
  majors = (
    ()
    if mesh is None
    else tuple(reports.normalize_whitespace(m.text or "") for m in mesh.findall("major") if m.text)
  )
  image_ids = tuple(p.get("id") for p in root.iter("parentImage") if p.get("id"))
  return Report(study_id, tuple(sections), majors, mesh is not None, image_ids)


def tgz_files(path: epath.Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
  """(member name, a function that reads its bytes) of every file of a .tgz, front to back.

  The whole archive is read to its end and gzip's checksum checked there: tarfile alone ends
  its iteration quietly at a damaged header in the middle of a stream, which would drop the
  rest of the archive without a word. Raises one of _ARCHIVE_ERRORS where the archive is
  damaged.
  """
  with path.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
    with tarfile.open(fileobj=unzipped, mode="r|") as tar:
      for member in tar:
        if member.isfile():
          yield member.name, lambda m=member: tar.extractfile(m).read()
    while unzipped.read(1 << 20):  # the rest, to gzip's end-of-stream checksum
      pass


def _study_id(member_name: str) -> str | None:
  """'ecgen-radiology/12.xml' -> '12'; None for anything that is not an XML report."""
  base = member_name.rsplit("/", 1)[-1]
  return base[:-4] if base.lower().endswith(".xml") and not base.startswith(".") else None


def _xml_files(source: epath.Path, archived: bool) -> Iterator[tuple[str, bytes]]:
  """(study id, XML bytes) of every report of the archive or folder."""
  if archived:
    for member, data in tgz_files(source):
      study_id = _study_id(member)
      if study_id is not None:
        yield study_id, data()
  else:
    for path in sorted(source.glob("*.xml")):
      yield _study_id(path.name), path.read_bytes()


def read_reports(sources: Sources) -> tuple[list[Report], list[tuple[str, str]]]:
  """Every report, in study id order, and (study id, why) of those that do not parse."""
  parsed, unreadable = [], []
  try:
    for study_id, xml in _xml_files(sources.reports, sources.reports_archived):
      try:
        parsed.append(parse_report(study_id, xml))
      except ValueError as e:
        logging.warning("iu_xray: report %s cannot be read: %s.", study_id, e)
        unreadable.append((study_id, str(e)))
  except _ARCHIVE_ERRORS as e:
    raise ValueError(
      f"{sources.reports} is not a readable .tgz archive ({type(e).__name__}: {e}). "
      f"Download it again from {REPORTS_URL}, or unpack it so that {REPORTS_DIR}/ lies in "
      "the manual dir."
    ) from e
  if not parsed and not unreadable:
    raise FileNotFoundError(
      f"{sources.reports} holds no XML report. Download {REPORTS_TGZ} again from {REPORTS_URL}."
    )
  order = lambda study_id: (len(study_id), study_id)  # numeric ids in numeric order
  parsed.sort(key=lambda r: order(r.study_id))
  unreadable.sort(key=lambda u: order(u[0]))
  return parsed, unreadable


# ------------------------------------------------------------------------------------------------
# Views, splits, candidates.


def read_projections(path: epath.Path) -> dict[str, str]:
  """image_key -> projection, lower case ('frontal', 'lateral' or what the table says)."""
  rows = study_writer.read_csv(
    path,
    PROJECTIONS_COLUMNS,
    "The projections table needs a file name and a projection "
    f"(Frontal / Lateral) per image, as indiana_projections.csv of {PROJECTIONS_URL}.",
  )
  return {image_key(row["filename"]): row["projection"].strip().lower() for row in rows}


def split_of(study_id: str, seed: int, fractions: Sequence[float]) -> str:
  """The split of a report: a uniform number from sha256(seed, id) against the fractions."""
  digest = hashlib.sha256(f"iu_xray/{seed}/{study_id}".encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  edge = 0.0
  for split, fraction in zip(study_writer.SPLITS, fractions):
    edge += fraction
    if u < edge:
      return split
  return study_writer.SPLITS[-1]


def candidates(
  reports_: Sequence[Report],
  views: dict[str, str],
  image_path: Callable[[str], str],
  seed: int,
  fractions: Sequence[float],
) -> tuple[dict[str, list[CandidateStudy]], dict[str, list[SkipRow]], collections.Counter]:
  """The studies of each split with their frontal and lateral images (in file name order).

  Returns:
    (studies, view rows, counts): studies[split]; a SkipRow (view_unknown / not_used) for each
    image without a frontal or lateral projection; counts of images by view.
  """
  studies = {split: [] for split in study_writer.SPLITS}
  rows = {split: [] for split in study_writer.SPLITS}
  counts = collections.Counter()
  for report in reports_:
    split = split_of(report.study_id, seed, fractions)
    by_view = {"frontal": [], "lateral": []}
    for image_id in sorted(set(report.images)):
      view = PROJECTION_VIEWS.get(views.get(image_key(image_id), ""))
      counts[view or "view_unknown"] += 1
      if view is None:
        rows[split].append(
          SkipRow(
            split, report.study_id, report.study_id, image_id, VIEW_UNKNOWN, study_writer.NOT_USED
          )
        )
        continue
      by_view[view].append(ImageFile(image_id, image_path(image_id)))
    studies[split].append(
      CandidateStudy(
        study_id=report.study_id,
        subject_id=report.study_id,
        frontal=tuple(by_view["frontal"]),
        lateral=tuple(by_view["lateral"]),
      )
    )
  return studies, rows, counts


# ------------------------------------------------------------------------------------------------
# Images.


def png_files(folder: epath.Path) -> Iterator[epath.Path]:
  """The PNGs in ``folder`` and in its sub-folders up to PNG_DEPTH levels down."""
  for depth in range(PNG_DEPTH + 1):
    yield from folder.glob("/".join(["*"] * depth + ["*.png"]))


def index_png_files(folder: epath.Path) -> dict[str, str]:
  """image_key -> path of every PNG of `png_files` (the first in path order where one key has
  several files)."""
  index = {}
  for path in sorted(png_files(folder)):
    index.setdefault(image_key(path.name), str(path))
  return index


class ArchiveImages:
  """Decodes the wanted images of the PNG archive in one pass; a loader for study_writer.

  A .tgz cannot be read at random, so the archive is read once, front to back, and each wanted
  image is decoded (`mopoe_jax.data.images.decode_image`, the steps of `load_image`) in a thread
  pool as it passes: memory holds the decoded S x S images only (7,470 x 16 KiB at 128 px).
  """

  def __init__(self, archive: epath.Path, wanted: set[str], size: int, num_workers: int):
    self.archive = archive
    self._decoded: dict[str, np.ndarray | Exception] = {}
    self._size = size
    start = last_log = time.monotonic()
    futures = {}
    try:
      with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        for member, data in tgz_files(archive):
          key = image_key(member)
          if key not in wanted or key in futures:
            continue
          futures[key] = pool.submit(self._decode, data())
          now = time.monotonic()
          if now - last_log >= 30:
            last_log = now
            logging.info(
              "iu_xray: %d of %d images read from %s (%.0f s).",
              len(futures),
              len(wanted),
              archive.name,
              now - start,
            )
    except _ARCHIVE_ERRORS as e:
      raise ValueError(
        f"{archive} is not a readable .tgz archive ({type(e).__name__}: {e}). Download it "
        f"again from {PNG_URL}, or unpack it into the manual dir."
      ) from e
    for key, future in futures.items():
      self._decoded[key] = future.result()
    logging.info(
      "iu_xray: %d of %d images found in %s (%.0f s).",
      len(futures),
      len(wanted),
      archive.name,
      time.monotonic() - start,
    )

  def _decode(self, data: bytes) -> np.ndarray | Exception:
    try:
      return images.decode_image(io.BytesIO(data), self._size)
    except images.IMAGE_ERRORS as e:
      return e

  def load(self, image: ImageFile, size: int) -> np.ndarray:
    """The decoded image (at the size given when the archive was read; ``size`` is that of the
    same builder config); FileNotFoundError where the archive lacks it, the decoding error
    where it did not decode."""
    del size
    found = self._decoded.get(image_key(image.image_id))
    if found is None:
      raise FileNotFoundError(f"{image.image_id}.png is not in {self.archive}")
    if isinstance(found, Exception):
      raise found
    return found
