"""The example layout shared by every chest X-ray builder (synthetic_cxr and mimic_cxr).

One example is one study: a feature per modality of the registry (`mopoe_jax.data.modalities`:
images uint8 [S, S, 1], zeros where the study has none; text int32 [T] word ids, all <pad> where
missing), and
  report     string           the FINDINGS text the ids were made from
  available  bool  [M]        which modalities the study has, in registry order
  labels     float32 [14]     CheXpert labels in LABELS order: 1 positive, 0 negative,
                              -1 uncertain, NaN not mentioned (blank in the CSV)
  finding    int32            1 if any of the 13 pathologies (all but "No Finding") is 1
  study_id   string
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

# The layout is the contract of mopoe_jax.data.datasource: same modality and label columns.
from mopoe_jax.data.datasource import LABELS, MODALITIES, PROBE_LABELS
from mopoe_jax.data.modalities import REGISTRY

__all__ = [
  "LABELS",
  "MODALITIES",
  "NO_FINDING_INDEX",
  "PROBE_LABELS",
  "finding_from_labels",
  "study_features",
]

NO_FINDING_INDEX = LABELS.index("No Finding")


def finding_from_labels(labels: np.ndarray) -> np.ndarray:
  """1 where any of the 13 pathologies is positive (1.0); labels [..., 14] -> int32 [...]."""
  labels = np.asarray(labels, dtype=np.float32)
  pathologies = np.delete(labels, NO_FINDING_INDEX, axis=-1)
  return np.any(pathologies == 1.0, axis=-1).astype(np.int32)


def study_features(image_size: int, text_length: int, extra=None) -> tfds.features.FeaturesDict:
  """The FeaturesDict of one study; ``extra`` adds builder-specific features."""
  features = {
    **{
      m.name: (
        tfds.features.Tensor(shape=(text_length,), dtype=np.int32)
        if m.is_text
        else tfds.features.Image(shape=(image_size, image_size, 1), dtype=np.uint8)
      )
      for m in REGISTRY
    },
    "report": tfds.features.Text(),
    "available": tfds.features.Tensor(shape=(len(MODALITIES),), dtype=np.bool_),
    "labels": tfds.features.Tensor(shape=(len(LABELS),), dtype=np.float32),
    "finding": tfds.features.Tensor(shape=(), dtype=np.int32),
    "study_id": tfds.features.Text(),
  }
  features.update(extra or {})
  return tfds.features.FeaturesDict(features)
