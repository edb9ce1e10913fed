"""The embedded synthetic chest X-ray dataset ``synthetic_cxr``; importing registers it.

What it renders: docs/model.md#the-embedded-synthetic-dataset.

Modules: ``scene`` (findings, patient and geometry of a study), ``render`` (the two views),
``reports`` (FINDINGS text and the labels it implies), ``studies`` (one study from
(seed, split, index)), ``synthetic_cxr_dataset_builder`` (the tfds builder).
"""

from __future__ import annotations

from input_pipeline.synthetic_cxr.studies import Study, generate_study
from input_pipeline.synthetic_cxr.synthetic_cxr_dataset_builder import (
  VOCABULARY_KEY,
  Builder,
  SyntheticCxrConfig,
)

__all__ = ["Builder", "Study", "SyntheticCxrConfig", "VOCABULARY_KEY", "generate_study"]
