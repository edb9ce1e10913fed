"""tfds builder ``iu_xray``: the Indiana University chest X-ray collection (Open-i) from a
manual dir: frontal image, lateral image and the report's FINDINGS, in the layout of mimic_cxr.

The collection is free to download (no credentials): see MANUAL_DOWNLOAD_INSTRUCTIONS. From the
repository root:

  python -m input_pipeline.iu_xray --config=paper --manual_dir=/path/to/iu_xray \
      --data_dir=$HOME/tensorflow_datasets

Each example is one study (one report) in the layout of ``input_pipeline.features.study_features``
plus ``frontal_image`` and ``lateral_image`` (the file names used, without ".png"; "" where
none). Images go through the same steps as MIMIC-CXR's (`mopoe_jax.data.images`); the text
vocabulary (from the train studies written only) is in ``info.metadata["vocabulary"]``; the
labels are derived from the reports' MeSH terms (`input_pipeline.iu_xray.mesh_labels`,
docs/iu_xray.md), not CheXpert's.
The split is per report, from a hash of ``split_seed``; its seed, fractions and sizes are in
``info.metadata["split"]``. As for MIMIC, ``skip_report_<split>.csv`` beside the dataset lists
every report not written and every file not used, and ``info.metadata["skipped"]`` counts them.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Callable

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from input_pipeline import features, study_writer
from input_pipeline.iu_xray import collection, mesh_labels
from mopoe_jax.data import report_text as reports

_DESCRIPTION = """\
The Indiana University chest X-ray collection (Open-i, National Library of Medicine) as (frontal
image, lateral image, report FINDINGS) triples for multimodal generative models, in the layout of
the mimic_cxr builder. Images are the collection's PNGs, centre-cropped and resized; text is the
lower-cased FINDINGS section as word ids of a train-split vocabulary
(info.metadata["vocabulary"]); labels are derived from the reports' MeSH major terms by a fixed
table (not CheXpert labels).
"""

_CITATION = """\
@article{demner2016preparing,
  title={Preparing a collection of radiology examinations for distribution and retrieval},
  author={Demner-Fushman, Dina and Kohli, Marc D. and Rosenman, Marc B. and Shooshan, Sonya E.
          and Rodriguez, Laritza and Antani, Sameer and Thoma, George R. and McDonald, Clement J.},
  journal={Journal of the American Medical Informatics Association},
  volume={23}, number={2}, pages={304--310}, year={2016}
}
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
The Indiana University chest X-ray collection is public (reports under CC BY-NC-ND 4.0; see
{collection.OPEN_I_URL}); nothing is downloaded by this code. Put into one directory, the manual
dir:

1. The reports, {collection.REPORTS_TGZ} (a few MB):
     wget {collection.REPORTS_URL}
   as downloaded, or unpacked so that {collection.REPORTS_DIR}/1.xml ... lie in the manual dir.
2. The images, {collection.PNG_TGZ} (the large one):
     wget {collection.PNG_URL}
   as downloaded, or unpacked into the manual dir or a folder of it, at most two levels
   down (the PNGs are found by name).
3. The view of each image, {collection.PROJECTIONS_CSV}: the PNG archive does not say which
   image is frontal and which lateral. Use indiana_projections.csv of the Kaggle copy of the
   collection ({collection.PROJECTIONS_URL}; columns uid, filename, projection), or write
   your own table with the columns filename and projection (Frontal or Lateral), e.g. from the
   ViewPosition of the collection's DICOM archive. An image the table does not list as Frontal
   or Lateral is not used (skip report: view_unknown).

Then build from the repository root with (configs: paper, all_studies)
  python -m input_pipeline.iu_xray --config=paper --manual_dir=/path/to/iu_xray \\
      --data_dir=$HOME/tensorflow_datasets
"""


@dataclasses.dataclass(eq=False)
class IuXrayConfig(tfds.core.BuilderConfig):
  """What goes into one variant of the dataset.

  Attributes:
    image_size: side S of the stored square images (uint8 [S, S, 1]).
    text_length: T word ids per study: at most T - 1 words, <eos>, then <pad>.
    selection: "paper" (frontal + lateral + non-empty section, all three required) or
      "all_studies" (every report with at least one usable modality; `available` says which).
    section: "findings", or "findings_or_impression" (IMPRESSION where FINDINGS is empty).
    min_count: the vocabulary keeps the words seen MORE than min_count times in the reports of
      the train studies written.
    projections_csv: the file of the manual dir that gives each image's view.
    split_seed: seed of the per-report hash that assigns the splits.
    split_fractions: the expected shares of (train, validation, test); they sum to 1.
    num_workers: threads that decode images (None: 2 x CPUs, at most 32). Does not change the
      data.
  """

  image_size: int = 128
  text_length: int = 128
  selection: str = study_writer.PAPER
  section: str = reports.FINDINGS
  min_count: int = 3
  projections_csv: str = collection.PROJECTIONS_CSV
  split_seed: int = 0
  split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
  num_workers: int | None = None

  def __post_init__(self):
    study_writer.check_config(self)
    fractions = tuple(self.split_fractions)
    if (
      len(fractions) != 3
      or any(f <= 0 for f in fractions)
      or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6)
    ):
      raise ValueError(
        f"split_fractions must be three shares (train, validation, test) > 0 "
        f"that sum to 1, got {self.split_fractions}."
      )


def _extra_features(study: study_writer.SelectedStudy, used: dict[str, str]) -> dict:
  del study
  return {"frontal_image": used.get("frontal", ""), "lateral_image": used.get("lateral", "")}


def _image_path(sources: collection.Sources, png_files: dict[str, str]) -> Callable[[str], str]:
  """image id -> where the loader finds it: a name in the archive, or the unpacked file (a path
  that does not exist where no PNG has the image's name)."""
  if sources.images_archived:
    return lambda image_id: f"{sources.images}:{image_id}.png"
  return lambda image_id: png_files.get(
    collection.image_key(image_id), str(sources.images / f"{image_id}.png")
  )


def _select(parsed, unreadable, studies, view_rows, config):
  """The selection rule on every split: (selected, skip rows, reports listed) per split."""
  texts = {r.study_id: reports.choose_section(list(r.sections), config.section) for r in parsed}
  labels = {r.study_id: mesh_labels.labels_from_terms(r.majors) for r in parsed if r.has_mesh}
  selected, skipped = {}, {}
  for split in study_writer.SPLITS:
    selected[split], rows, _ = study_writer.select_split(
      split,
      studies[split],
      lambda some: [texts[s.study_id] for s in some],
      labels,
      config.selection,
    )
    skipped[split] = view_rows[split] + rows
  listed = {split: len(studies[split]) for split in study_writer.SPLITS}
  for study_id, why in unreadable:
    split = collection.split_of(study_id, config.split_seed, config.split_fractions)
    skipped[split].append(
      study_writer.SkipRow(
        split, study_id, study_id, "", collection.REPORT_UNREADABLE, study_writer.STUDY_SKIPPED
      )
    )
    listed[split] += 1
    logging.info("iu_xray: report %s skipped: %s", study_id, why)
  for split in study_writer.SPLITS:
    if not selected[split]:  # tfds cannot write an empty split: say why it is empty
      reasons = collections.Counter(r.reason for r in skipped[split])
      raise ValueError(
        f"No report of the {split} split passes the {config.selection!r} selection "
        f"({listed[split]} reports in the split; skipped by reason: "
        f"{dict(reasons) or 'none'}). The full collection gives every split hundreds of "
        "studies: check that the manual dir holds all of NLMCXR_reports.tgz, the images and "
        "the projections table (MANUAL_DOWNLOAD_INSTRUCTIONS)."
      )
  return selected, skipped, listed


class Builder(tfds.core.GeneratorBasedBuilder):
  """The Indiana University chest X-ray collection: frontal, lateral radiographs and FINDINGS."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
    IuXrayConfig(
      name="paper",
      description="As the paper's MIMIC selection: frontal + lateral + non-empty FINDINGS, "
      "128 px, 128 tokens.",
      selection=study_writer.PAPER,
    ),
    IuXrayConfig(
      name="all_studies",
      description="Every report with at least one of a frontal image, a lateral image and "
      "a non-empty FINDINGS section, 128 px, 128 tokens; `available` says which.",
      selection=study_writer.ALL_STUDIES,
    ),
  ]
  DEFAULT_CONFIG_NAME = "paper"

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    extra = {"frontal_image": tfds.features.Text(), "lateral_image": tfds.features.Text()}
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=features.study_features(config.image_size, config.text_length, extra=extra),
      homepage=collection.OPEN_I_URL,
      citation=_CITATION,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    sources = collection.find_sources(epath.Path(dl_manager.manual_dir), config.projections_csv)
    num_workers = config.num_workers or study_writer.default_num_workers()

    parsed, unreadable = collection.read_reports(sources)
    views = collection.read_projections(sources.projections)
    png_files = {} if sources.images_archived else collection.index_png_files(sources.images)
    studies, view_rows, view_counts = collection.candidates(
      parsed, views, _image_path(sources, png_files), config.split_seed, config.split_fractions
    )
    logging.info(
      "iu_xray: %d reports (%d unreadable), %d images listed in them (%s), %d rows "
      "in %s, %d unpacked PNG files.",
      len(parsed) + len(unreadable),
      len(unreadable),
      sum(view_counts.values()),
      dict(view_counts),
      len(views),
      sources.projections.name,
      len(png_files),
    )
    selected, skipped, listed = _select(parsed, unreadable, studies, view_rows, config)

    load_image = study_writer.load_from_path
    if sources.images_archived:
      wanted = {
        collection.image_key(image.image_id)
        for split in selected.values()
        for study in split
        for image in study.frontal + study.lateral
      }
      load_image = collection.ArchiveImages(
        sources.images, wanted, config.image_size, num_workers
      ).load

    self._set_metadata(listed, mesh_labels.unmapped_terms(r.majors for r in parsed))
    writer = study_writer.SplitWriter(
      self,
      "iu_xray",
      collection.SKIP_REPORT_COLUMNS,
      extra_features=_extra_features,
      load_image=load_image,
    )
    return {
      split: self._generate_examples(
        writer.examples(
          split,
          selected[split],
          skipped[split],
          listed=listed[split],
          num_workers=num_workers,
        )
      )
      for split in study_writer.SPLITS
    }

  def _set_metadata(self, listed: dict[str, int], unmapped) -> None:
    config = self.builder_config
    self.info.metadata["config"] = {
      "image_size": config.image_size,
      "text_length": config.text_length,
      "selection": config.selection,
      "section": config.section,
      "min_count": config.min_count,
      "projections_csv": config.projections_csv,
    }
    self.info.metadata["split"] = {
      "unit": "report (one examination per patient: the report number is the patient id)",
      "seed": config.split_seed,
      "fractions": list(config.split_fractions),
      "reports": listed,
    }
    self.info.metadata["labels"] = {
      "source": "MeSH major terms (input_pipeline/iu_xray/mesh_labels.py); not CheXpert",
      "unmapped_terms": dict(unmapped.most_common(30)),
    }
    logging.info(
      "iu_xray: reports per split %s (seed %d, fractions %s); MeSH terms that set "
      "no label, by reports: %s.",
      listed,
      config.split_seed,
      config.split_fractions,
      dict(unmapped.most_common(10)) or "none",
    )

  def _generate_examples(self, examples):
    """(study_id, example) pairs of one split, in report id order (`SplitWriter.examples`)."""
    yield from examples
