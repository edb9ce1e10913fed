"""What training and evaluation need from a dataset, and nothing about how it is stored.

The entry point (main.py) builds the data source once (``input_pipeline.tfds_source.load``: the tfds
builder, its vocabulary, tf.data iterators) and hands it to `mopoe_jax.training.loop` and
`mopoe_jax.evaluation.evaluate`; the library itself imports neither TensorFlow nor tfds. Any object
with these members works, e.g. an in-memory one in a test.

A batch is a dict of numpy arrays with a leading batch dimension, one entry per modality of the
registry (`mopoe_jax.data.modalities`, which also prints the whole layout: `batch_layout`) plus
``available`` (bool [b, M]), ``labels`` (float32 [b, 14], LABELS), ``finding`` (int32 [b]),
``valid`` (eval batches) and ``attributes`` (classifier batches, where the dataset has them).
Targets are made from ``labels`` (`mopoe_jax.data.labels.label_targets`).
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

import numpy as np

# Re-exported: the contract's modality and label columns live in their own modules.
from mopoe_jax.data.labels import LABELS, PROBE_LABELS
from mopoe_jax.data.modalities import MODALITIES, MODEL_KEYS

__all__ = [
  "LABELS",
  "MODALITIES",
  "MODEL_KEYS",
  "PROBE_LABELS",
  "Batch",
  "DataSource",
  "Vocabulary",
]

Batch = dict[str, np.ndarray]


class Vocabulary(Protocol):
  """The report vocabulary: ids 0, 1, 2 are <exc>, <pad>, <eos>."""

  words: list[str]
  pad_id: int

  def __len__(self) -> int: ...

  def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str: ...


class DataSource(Protocol):
  """A prepared dataset of chest X-ray studies, read by training and evaluation."""

  name: str  # full name and version, e.g. 'synthetic_cxr/small/1.0.0'
  vocab: Vocabulary
  attribute_names: tuple[str, ...]  # ground-truth rendering attributes (empty: none)

  def num_examples(self, split: str) -> int:
    """Studies of ``split`` that the batches hold (complete ones only with require_complete)."""

  def train_batches(
    self, *, global_batch_size: int, seed: int, start_step: int = 0
  ) -> Iterator[Batch]:
    """Endless shuffled batches of this process's share of the train split, from batch
    ``start_step`` on (the same seed gives the same batches); ``global_batch_size //
    process_count`` rows each."""

  def eval_batches(
    self,
    split: str,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
  ) -> Iterator[Batch]:
    """One pass over a process's shard of ``split`` in fixed order, padded to equal batches of
    ``batch_size // process_count`` rows (``valid`` marks real rows). ``process_index=0,
    process_count=1`` reads the whole split here."""

  def selected_batches(
    self, split: str, indices: np.ndarray, *, batch_size: int
  ) -> Iterator[Batch]:
    """One pass over the studies of ``split`` at ``indices`` (int [n], sorted, unique; positions
    in the order of `eval_batches` on one process), in that order, padded to equal batches of
    ``batch_size`` rows like `eval_batches` (``valid`` marks real rows). Images of the other
    studies are not decoded."""

  def attributes(
    self, split: str, max_examples: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """(attributes float32 [N, A], labels float32 [N, 14]) of (the first ``max_examples``
    studies of) ``split`` in the order of `eval_batches` on one process."""

  def classifier_batches(
    self, *, batch_size: int, seed: int, shuffle_buffer_size: int
  ) -> Iterator[Batch]:
    """Endless shuffled batches of the train split with ``attributes`` (if any), for the
    coherence classifiers."""
