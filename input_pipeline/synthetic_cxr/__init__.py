"""The embedded synthetic chest X-ray dataset ``synthetic_cxr`` (SPEC §8); importing registers it.

Modules: ``scene`` (findings, patient and geometry of a study), ``render`` (the two views),
``reports`` (FINDINGS text and the labels it implies), ``studies`` (one study from
(seed, split, index)), ``synthetic_cxr_dataset_builder`` (the tfds builder).
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from input_pipeline import text as text_lib
from input_pipeline.synthetic_cxr.studies import Study
from input_pipeline.synthetic_cxr.studies import generate_study
from input_pipeline.synthetic_cxr.synthetic_cxr_dataset_builder import Builder
from input_pipeline.synthetic_cxr.synthetic_cxr_dataset_builder import SyntheticCxrConfig
from input_pipeline.synthetic_cxr.synthetic_cxr_dataset_builder import VOCABULARY_KEY

__all__ = ["Builder", "Study", "SyntheticCxrConfig", "VOCABULARY_KEY", "generate_study",
           "vocabulary_from_builder"]


def vocabulary_from_builder(builder: tfds.core.DatasetBuilder) -> text_lib.Vocabulary:
  """The report vocabulary stored in a prepared dataset's metadata (key "vocabulary")."""
  metadata = builder.info.metadata
  words = metadata.get(VOCABULARY_KEY) if metadata is not None else None
  if not words:
    raise ValueError(
        f"Dataset {builder.info.full_name!r} in {builder.data_dir!r} has no "
        f"{VOCABULARY_KEY!r} in its metadata; prepare it first "
        f"(builder.download_and_prepare()) with a builder that stores one, such as "
        f"synthetic_cxr.")
  return text_lib.Vocabulary(words)
