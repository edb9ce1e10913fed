"""tfds builder of the embedded synthetic chest X-ray dataset ``synthetic_cxr``.

What it renders: docs/model.md#the-embedded-synthetic-dataset.

No download: every study is generated from (seed, split, index) by ``studies.generate_study``.
Configs (image size, text length, studies per split train / validation / test):
  tiny    32 px,  32 tokens,    384 /  128 /  128   (tests; builds in seconds)
  small   64 px,  64 tokens,  6,000 /  600 / 1,000  (the default training run)
  paper  128 px, 128 tokens, 30,000 / 1,000 / 1,000

  import tensorflow_datasets as tfds
  import input_pipeline.synthetic_cxr  # registers the builder
  from input_pipeline import batching
  builder = tfds.builder("synthetic_cxr/small", data_dir=DATA_DIR)
  builder.download_and_prepare()
  vocab = batching.load_vocabulary(builder)

The report vocabulary is built from the train split's reports only (words seen more than
``vocabulary_min_count`` times) and stored in the dataset's metadata under "vocabulary".
"""

from __future__ import annotations

import dataclasses
import struct
import time
import zlib

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import features as features_lib
from input_pipeline.synthetic_cxr import scene as scene_lib
from input_pipeline.synthetic_cxr import studies
from mopoe_jax.data import text as text_lib

VOCABULARY_KEY = "vocabulary"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return (
    struct.pack(">I", len(data))
    + kind
    + data
    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
  )


def encode_png(image: np.ndarray, compress_level: int = 0) -> bytes:
  """A standard 8-bit grayscale PNG of a uint8 [H, W, 1] image.

  Written directly (signature, IHDR, one zlib IDAT, IEND; no row filters) because this is
  ~15x faster than PIL or tfds' TF graph on small images, and the noisy pictures hardly
  compress anyway: level 0 (stored) makes the files ~15% larger than level 1.
  """
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 1:
    raise ValueError(f"encode_png takes a uint8 [H, W, 1] image, got {image.dtype} {image.shape}.")
  h, w = image.shape[:2]
  rows = np.zeros((h, w + 1), np.uint8)  # each row: filter type 0 (None), then the pixels
  rows[:, 1:] = image[..., 0]
  header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8 bits, grayscale, no interlace
  return (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", header)
    + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level))
    + _png_chunk(b"IEND", b"")
  )


@dataclasses.dataclass
class SyntheticCxrConfig(tfds.core.BuilderConfig):
  """Sizes, seed and missing-modality rates of one synthetic dataset."""

  image_size: int = 64
  text_length: int = 64
  num_train: int = 6000
  num_validation: int = 600
  num_test: int = 1000
  seed: int = 0
  p_missing_lateral: float = 0.15
  p_missing_text: float = 0.05
  vocabulary_min_count: int = 3


class Builder(tfds.core.GeneratorBasedBuilder):
  """Generated chest X-ray studies: frontal + lateral view + FINDINGS report, 14 labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
    SyntheticCxrConfig(
      name="tiny",
      description="32 px, 32 tokens, 384/128/128 studies.",
      image_size=32,
      text_length=32,
      num_train=384,
      num_validation=128,
      num_test=128,
    ),
    SyntheticCxrConfig(
      name="small",
      description="64 px, 64 tokens, 6000/600/1000 studies.",
      image_size=64,
      text_length=64,
      num_train=6000,
      num_validation=600,
      num_test=1000,
    ),
    SyntheticCxrConfig(
      name="paper",
      description="128 px, 128 tokens, 30000/1000/1000 studies.",
      image_size=128,
      text_length=128,
      num_train=30000,
      num_validation=1000,
      num_test=1000,
    ),
  ]
  DEFAULT_CONFIG_NAME = "small"

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    attributes = tfds.features.FeaturesDict(
      {name: tfds.features.Scalar(dtype=np.float32) for name in scene_lib.ATTRIBUTE_NAMES}
    )
    return self.dataset_info_from_configs(
      description=__doc__,
      features=features_lib.study_features(
        config.image_size, config.text_length, extra={"attributes": attributes}
      ),
      metadata=tfds.core.MetadataDict(),
      homepage=None,
      citation=None,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    config = self.builder_config
    start = time.perf_counter()
    vocabulary = text_lib.Vocabulary.build(
      studies.split_reports(
        config.seed, "train", config.num_train, config.p_missing_lateral, config.p_missing_text
      ),
      min_count=config.vocabulary_min_count,
    )
    logging.info(
      "synthetic_cxr/%s: vocabulary of %d words from %d train reports in %.1f s.",
      config.name,
      len(vocabulary),
      config.num_train,
      time.perf_counter() - start,
    )
    self.info.metadata[VOCABULARY_KEY] = vocabulary.words
    sizes = {
      "train": config.num_train,
      "validation": config.num_validation,
      "test": config.num_test,
    }
    return {split: self._generate_examples(split, n, vocabulary) for split, n in sizes.items()}

  def _generate_examples(self, split: str, num_studies: int, vocabulary: text_lib.Vocabulary):
    config = self.builder_config
    size, length = config.image_size, config.text_length
    blank = encode_png(np.zeros((size, size, 1), np.uint8))
    pad = np.full((length,), text_lib.PAD_ID, np.int32)
    start = time.perf_counter()
    for index in range(num_studies):
      study = studies.generate_study(
        config.seed, split, index, size, config.p_missing_lateral, config.p_missing_text
      )
      has_text = bool(study.available[2])
      yield (
        index,
        {
          "frontal": encode_png(study.frontal),
          "lateral": encode_png(study.lateral) if study.lateral is not None else blank,
          "text": vocabulary.encode(study.report, length) if has_text else pad,
          "report": study.report if has_text else "",
          "available": study.available,
          "labels": study.labels,
          "finding": np.int32(study.finding),
          "study_id": study.study_id,
          "attributes": study.attributes,
        },
      )
      if (index + 1) % 2000 == 0:
        elapsed = time.perf_counter() - start
        logging.info(
          "synthetic_cxr/%s %s: %d/%d studies, %.0f studies/s, ETA %.0f s.",
          config.name,
          split,
          index + 1,
          num_studies,
          (index + 1) / elapsed,
          (num_studies - index - 1) * elapsed / (index + 1),
        )
