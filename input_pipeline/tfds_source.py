"""The data source of a run: a prepared tfds dataset, its vocabulary and its tf.data streams.

`load` is what the entry point calls: it prepares the dataset if needed, checks it against the
config, loads the vocabulary and returns a `TfdsData`, which implements
`mopoe_jax.data.datasource.DataSource` for training, evaluation and the coherence classifiers.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import batching, integrity
from input_pipeline.tf_import import tf
from mopoe_jax.data import text as text_lib

ATTRIBUTES_FEATURE = "attributes"
_CLASSIFIER_KEYS = ("frontal", "lateral", "text", "available", "labels", "finding")


def check_dataset_matches(data_config: ml_collections.ConfigDict, builder) -> None:
  """The prepared dataset must have the image size and text length the config asks for."""
  feats = builder.info.features
  size = feats["frontal"].shape[0]
  length = feats["text"].shape[0]
  if size != data_config.image_size or length != data_config.text_length:
    raise ValueError(
      f"Dataset {data_config.name} has {size} px images and {length}-token texts, but the "
      f"config asks for {data_config.image_size} px and {data_config.text_length} tokens. "
      f"Set --config.data.image_size={size} --config.data.text_length={length} (and widths "
      "that fit), or choose a dataset config of the wanted size."
    )


def dataset_attribute_names(builder: tfds.core.DatasetBuilder) -> tuple[str, ...]:
  """The ground-truth attributes a builder stores with each study (empty if none)."""
  feature_dict = builder.info.features
  if ATTRIBUTES_FEATURE not in feature_dict.keys():
    return ()
  return tuple(feature_dict[ATTRIBUTES_FEATURE].keys())


def _stack_attributes(example: dict, names: Sequence[str]) -> tf.Tensor:
  return tf.stack([tf.cast(example[ATTRIBUTES_FEATURE][n], tf.float32) for n in names])


@dataclasses.dataclass
class TfdsData:
  """A prepared chest X-ray dataset (`mopoe_jax.data.datasource.DataSource`)."""

  config: ml_collections.ConfigDict  # the run's ``data`` section
  builder: tfds.core.DatasetBuilder
  vocab: text_lib.Vocabulary
  _eval_datasets: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def name(self) -> str:
    return self.builder.info.full_name

  @property
  def attribute_names(self) -> tuple[str, ...]:
    return dataset_attribute_names(self.builder)

  def num_examples(self, split: str) -> int:
    return batching.num_examples(
      self.builder, split, require_complete=bool(self.config.require_complete)
    )

  def train_batches(
    self, *, global_batch_size: int, seed: int, start_step: int = 0
  ) -> Iterator[batching.Batch]:
    return batching.train_iterator(
      self.builder,
      self.config,
      global_batch_size=global_batch_size,
      seed=seed,
      start_step=start_step,
    )

  def eval_batches(
    self,
    split: str,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
  ) -> Iterator[batching.Batch]:
    # Built once per split and shape (building traces the pipeline's functions: about a second
    # on CPU), iterated afresh by each call: the loop evaluates every few steps.
    key = (split, batch_size, process_index, process_count)
    if key not in self._eval_datasets:
      self._eval_datasets[key] = batching.eval_dataset(
        self.builder,
        self.config,
        split,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
      )
    return self._eval_datasets[key].as_numpy_iterator()

  def selected_batches(
    self, split: str, indices: np.ndarray, *, batch_size: int
  ) -> Iterator[batching.Batch]:
    return batching.selected_iterator(
      self.builder, self.config, split, indices, batch_size=batch_size
    )

  def attributes(
    self, split: str, max_examples: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Attributes and labels of ``split`` in the fixed order of `eval_batches`.

    Images are not decoded. Returns (attributes float32 [N, A], labels float32 [N, 14]); the
    labels let the caller check that the rows line up with its own pass over the split.
    """
    names = self.attribute_names
    ds = self.builder.as_dataset(
      split=split,
      shuffle_files=False,
      decoders={k: tfds.decode.SkipDecoding() for k in batching.IMAGE_KEYS},
      read_config=tfds.ReadConfig(try_autocache=False),
    )
    if self.config.require_complete:
      ds = ds.filter(lambda ex: tf.reduce_all(ex["available"]))
    if max_examples is not None:
      ds = ds.take(max_examples)
    ds = ds.map(lambda ex: (_stack_attributes(ex, names), ex["labels"])).batch(1024)
    parts = list(ds.as_numpy_iterator())
    if not parts:
      raise ValueError(f"Split {split!r} of {self.name} has no examples.")
    return (
      np.concatenate([p[0] for p in parts]).astype(np.float32),
      np.concatenate([p[1] for p in parts]).astype(np.float32),
    )

  def classifier_batches(
    self, *, batch_size: int, seed: int, shuffle_buffer_size: int
  ) -> Iterator[batching.Batch]:
    """Endless shuffled batches of the train split with the attributes that `batching` drops."""
    names = self.attribute_names
    ds = self.builder.as_dataset(
      split=self.config.train_split,
      shuffle_files=True,
      read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
    )

    def select(ex):
      out = {k: ex[k] for k in _CLASSIFIER_KEYS}
      if names:
        out[ATTRIBUTES_FEATURE] = _stack_attributes(ex, names)
      return out

    ds = (
      ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)
      .repeat()
      .shuffle(shuffle_buffer_size, seed=seed)
      .batch(batch_size, drop_remainder=True)
      .prefetch(2)
    )
    return ds.as_numpy_iterator()


def load(data_config: ml_collections.ConfigDict) -> TfdsData:
  """Prepares (once) and opens the dataset of ``data_config``, checked against its sizes.

  Raises `integrity.DatasetFileError` (naming the file and how to rebuild the dataset) when a
  prepared file is unreadable, missing or truncated (`integrity.check_prepared`: a stat and one
  record per shard).
  """
  builder = batching.get_builder(data_config)
  integrity.check_prepared(builder, data_config.get("data_dir"))
  check_dataset_matches(data_config, builder)
  return TfdsData(config=data_config, builder=builder, vocab=batching.load_vocabulary(builder))
