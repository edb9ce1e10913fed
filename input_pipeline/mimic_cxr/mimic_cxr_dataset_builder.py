"""tfds builder ``mimic_cxr``: MIMIC-CXR studies (frontal, lateral, FINDINGS) from a manual dir.

MIMIC-CXR is credentialed, so nothing is downloaded: the user points ``--manual_dir`` at a copy
of MIMIC-CXR-JPG 2.0.0 and the reports (see MANUAL_DOWNLOAD_INSTRUCTIONS). From the repository
root:

  python -m input_pipeline.mimic_cxr --config=paper \
      --manual_dir=/path/to/physionet.org/files/mimic-cxr-jpg/2.0.0 \
      --data_dir=$HOME/tensorflow_datasets

or, where apache-beam and mlcroissant are installed (the ``tfds`` command line of
tensorflow-datasets 4.9.10 does not start without them),

  PYTHONPATH=. tfds build input_pipeline/mimic_cxr --config=paper \
      --manual_dir=/path/to/physionet.org/files/mimic-cxr-jpg/2.0.0 \
      --data_dir=$HOME/tensorflow_datasets

Each example is one study in the layout of ``input_pipeline.features.study_features`` plus
``subject_id``, ``frontal_dicom_id`` and ``lateral_dicom_id`` (which images were used; "" where
none). The text vocabulary (from the train studies written only: `study_writer.SplitWriter`)
is stored in the dataset metadata:
``tfds.builder("mimic_cxr/paper", data_dir=...).info.metadata["vocabulary"]``.

Nothing vanishes silently: ``skip_report_<split>.csv`` beside the dataset's files lists every
study of the split CSV that was not written and every file that could not be used (columns
split, subject_id, study_id, dicom_id, reason, outcome; the reasons and outcomes are the
constants of ``input_pipeline.study_writer``); the counts are logged at the end of each
split and kept in ``info.metadata["skipped"]``.
"""

from __future__ import annotations

import dataclasses

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from input_pipeline import features, study_writer
from input_pipeline.mimic_cxr import selection
from mopoe_jax.data import report_text as reports

_DESCRIPTION = """\
MIMIC-CXR studies as (frontal image, lateral image, report FINDINGS) triples for multimodal
generative models, as in Klug, Sutter and Vogt, "Multimodal Generative Learning on the MIMIC-CXR
Database" (MIDL 2021). Images are MIMIC-CXR-JPG radiographs, centre-cropped and resized; text is
the lower-cased FINDINGS section as word ids of a train-split vocabulary
(info.metadata["vocabulary"]); labels are the CheXpert (or NegBio) labels of MIMIC-CXR-JPG.
"""

_CITATION = """\
@inproceedings{klug2021multimodal,
  title={Multimodal Generative Learning on the {MIMIC-CXR} Database},
  author={Klug, Hendrik and Sutter, Thomas M. and Vogt, Julia E.},
  booktitle={Medical Imaging with Deep Learning (MIDL)},
  year={2021}
}
@article{johnson2019mimiccxrjpg,
  title={{MIMIC-CXR-JPG}, a large publicly available database of labeled chest radiographs},
  author={Johnson, Alistair E. W. and Pollard, Tom J. and Greenbaum, Nathaniel R. and
          Lungren, Matthew P. and Deng, Chih-ying and Peng, Yifan and Lu, Zhiyong and
          Mark, Roger G. and Berkowitz, Seth J. and Horng, Steven},
  journal={arXiv preprint arXiv:1901.07042},
  year={2019}
}
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
MIMIC-CXR is credentialed data: become a credentialed PhysioNet user and sign the data use
agreements of both projects below, then download into one directory, the manual dir:

1. MIMIC-CXR-JPG 2.0.0 ({selection.JPG_URL}), about 570 GB:
     wget -r -N -c -np --user YOUR_USER --ask-password \\
         https://physionet.org/files/mimic-cxr-jpg/2.0.0/
   The directory physionet.org/files/mimic-cxr-jpg/2.0.0/ it creates is the manual dir. It
   must hold the image tree and the four CSVs (only the label CSV of the chosen label_source
   is read):
     files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg   (XX = the first two digits of the subject id)
     {selection.METADATA_CSV}
     {selection.CHEXPERT_CSV}
     {selection.NEGBIO_CSV}
     {selection.SPLIT_CSV}
2. The free-text reports, {selection.REPORTS_ZIP}, of MIMIC-CXR 2.0.0 ({selection.REPORTS_URL}):
     wget -N -c --user YOUR_USER --ask-password \\
         https://physionet.org/files/mimic-cxr/2.0.0/{selection.REPORTS_ZIP}
   Put the zip, as downloaded, into the manual dir. Alternatively unpack it so that its
   files/pXX/pSUBJECT/sSTUDY.txt land in the same files/ tree as the images (the zip is used
   whenever it is present).

The manual dir then looks like:
  files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
  files/p10/p10000032/s50414267.txt        (only if the reports are unpacked)
  {selection.METADATA_CSV}
  {selection.CHEXPERT_CSV}
  {selection.NEGBIO_CSV}
  {selection.SPLIT_CSV}
  {selection.REPORTS_ZIP}                   (unless unpacked)

Build from the repository root with (configs: paper, all_studies)
  python -m input_pipeline.mimic_cxr --config=paper \\
      --manual_dir=/path/to/physionet.org/files/mimic-cxr-jpg/2.0.0 \\
      --data_dir=$HOME/tensorflow_datasets
or, where apache-beam and mlcroissant are installed (the tfds command line needs them),
  PYTHONPATH=. tfds build input_pipeline/mimic_cxr --config=paper --manual_dir=... --data_dir=...
"""


@dataclasses.dataclass(eq=False)
class MimicCxrConfig(tfds.core.BuilderConfig):
  """What goes into one variant of the dataset.

  Attributes:
    image_size: side S of the stored square images (uint8 [S, S, 1]).
    text_length: T word ids per study: at most T - 1 words, <eos>, then <pad>.
    selection: "paper" (PA + lateral + non-empty section, all three required) or "all_studies"
      (every study with at least one usable modality; the `available` flags say which).
    label_source: "chexpert" or "negbio": the label CSV of MIMIC-CXR-JPG to read.
    section: "findings", or "findings_or_impression" (IMPRESSION where FINDINGS is empty).
    min_count: the vocabulary keeps the words seen MORE than min_count times in the reports of
      the train studies written.
    frontal_views: ViewPosition values that count as the frontal image.
    lateral_views: ViewPosition values that count as the lateral image.
    num_workers: threads that decode images and read reports (None: 2 x CPUs, at most 32).
      Does not change the data.
  """

  image_size: int = 128
  text_length: int = 128
  selection: str = study_writer.PAPER
  label_source: str = "chexpert"
  section: str = reports.FINDINGS
  min_count: int = 3
  frontal_views: tuple[str, ...] = ("PA",)
  lateral_views: tuple[str, ...] = ("LATERAL", "LL")
  num_workers: int | None = None

  def __post_init__(self):
    study_writer.check_config(self)
    if self.label_source not in selection.LABEL_CSVS:
      raise ValueError(
        f"Unknown label_source {self.label_source!r}; expected one of "
        f"{tuple(selection.LABEL_CSVS)}."
      )


def _extra_features(study: study_writer.SelectedStudy, used: dict[str, str]) -> dict:
  return {
    "subject_id": study.subject_id,
    "frontal_dicom_id": used.get("frontal", ""),
    "lateral_dicom_id": used.get("lateral", ""),
  }


class Builder(tfds.core.GeneratorBasedBuilder):
  """MIMIC-CXR studies: frontal and lateral radiographs and the report's FINDINGS."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
    MimicCxrConfig(
      name="paper",
      description="The paper's selection: PA + lateral + non-empty FINDINGS, 128 px, "
      "128 tokens, CheXpert labels.",
      image_size=128,
      text_length=128,
      selection=study_writer.PAPER,
    ),
    MimicCxrConfig(
      name="all_studies",
      description="Every study with at least one of a PA image, a lateral image and a "
      "non-empty FINDINGS section, 128 px, 128 tokens; `available` says which.",
      image_size=128,
      text_length=128,
      selection=study_writer.ALL_STUDIES,
    ),
  ]
  DEFAULT_CONFIG_NAME = "paper"

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    extra = {
      "subject_id": tfds.features.Text(),
      "frontal_dicom_id": tfds.features.Text(),
      "lateral_dicom_id": tfds.features.Text(),
    }
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=features.study_features(config.image_size, config.text_length, extra=extra),
      homepage=selection.JPG_URL,
      citation=_CITATION,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    manual_dir = epath.Path(dl_manager.manual_dir)
    paths = selection.check_manual_dir(manual_dir, config.label_source)
    num_workers = config.num_workers or study_writer.default_num_workers()

    split_of = selection.read_split(paths[selection.SPLIT_CSV])
    studies, view_counts = selection.read_studies(
      paths[selection.METADATA_CSV],
      split_of,
      paths[selection.FILES_DIR],
      frontal_views=config.frontal_views,
      lateral_views=config.lateral_views,
    )
    label_csv = paths[selection.LABEL_CSVS[config.label_source]]
    labels = selection.read_labels(label_csv)
    logging.info(
      "mimic_cxr: %d studies in %s, %d images listed (%s), %d label rows in %s.",
      len(split_of),
      selection.SPLIT_CSV,
      sum(view_counts.values()),
      dict(view_counts),
      len(labels),
      label_csv.name,
    )

    reader = selection.ReportReader(manual_dir)
    logging.info("mimic_cxr: reading reports from %s.", reader.source)
    try:
      selected, skipped = selection.select_studies(
        studies, reader, labels, config.selection, config.section, num_workers
      )
    finally:
      reader.close()

    self.info.metadata["config"] = {
      "image_size": config.image_size,
      "text_length": config.text_length,
      "selection": config.selection,
      "label_source": config.label_source,
      "section": config.section,
      "min_count": config.min_count,
      "frontal_views": list(config.frontal_views),
      "lateral_views": list(config.lateral_views),
    }
    writer = study_writer.SplitWriter(
      self, "mimic_cxr", selection.SKIP_REPORT_COLUMNS, extra_features=_extra_features
    )
    return {
      split: self._generate_examples(
        writer.examples(
          split,
          selected[split],
          skipped[split],
          listed=len(studies[split]),
          num_workers=num_workers,
        )
      )
      for split in selection.SPLITS.values()
    }

  def _generate_examples(self, examples):
    """(study_id, example) pairs of one split, in study id order (`SplitWriter.examples`)."""
    yield from examples
