"""Batching: tfds builder -> fixed-shape numpy batches of this process's share.

Every builder yields the studies described in `input_pipeline.features`; this module turns them
into fixed-shape batches for a data-parallel jitted step: one entry per modality of the registry
and ``available``, ``labels``, ``finding`` (and ``valid`` in eval batches), laid out as
`mopoe_jax.data.modalities.batch_layout` says (docs/architecture.md#the-batch-layout).

Strings (report, study_id) and builder-specific extras are dropped. ``b`` is the per-process
batch: the global batch divided by the number of processes;
`mopoe_jax.platform.sharding.to_global_batch` assembles the processes' batches into one global
array per key, sharded over the mesh axis ``'data'``. Nothing here touches devices: TensorFlow is
kept off the accelerators by the entry point (main.py).

Fields read from ``data_config`` (an ml_collections ConfigDict; configs/default.py documents
them all):
  name                 tfds name, e.g. 'synthetic_cxr/small' or 'mimic_cxr/paper'
  data_dir             where tfds keeps prepared datasets (None: the tfds default)
  manual_dir           where manually downloaded files lie (None: the tfds default)
  require_complete     keep only studies with all three modalities
  train_split          the split `train_iterator` reads
  shuffle_buffer_size  training shuffle buffer of still-encoded studies; None, or a buffer at
                       least as large as a process's shard, gives a uniform permutation of the
                       shard every epoch (memory: the shard's encoded size)
  prefetch             batches prepared ahead

Training order and deterministic resume
---------------------------------------
One epoch is this process's shard of the train split, filtered, shuffled by a seed derived from
``(seed, epoch)`` alone, cut to ``steps_per_epoch * b`` studies (``steps_per_epoch = n // b``;
like a PyTorch loader with ``drop_last``, each epoch drops a different remainder), then batched.
Because the order of epoch ``e`` depends on ``(seed, e)`` only, ``start_step = k`` starts the
stream directly at epoch ``k // steps_per_epoch`` and skips ``(k % steps_per_epoch) * b`` studies
of it while they are still encoded (``tfds.decode.SkipDecoding``): no image of a skipped study is
decoded, and whole epochs before it are never read. The cost of a resume is reading and parsing at
most one epoch of records (plus filling the shuffle buffer), independent of ``k``.
The order also depends on TensorFlow's global seed, which this project leaves unset: calling
``tf.random.set_seed`` changes every order (consistently, so resume stays exact if every run
sets the same one). Each epoch starts by refilling the shuffle buffer, a pause that ``prefetch``
batches cover only in part.
"""

from __future__ import annotations

import math
from typing import Iterator

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import builders, integrity
from input_pipeline.tf_import import tf
from mopoe_jax.data import modalities
from mopoe_jax.data import text as text_lib
from mopoe_jax.platform.sharding import check_batch_divisible

# The per-example features that batches carry, in the order of the module docstring.
BATCH_KEYS = modalities.MODALITIES + ("available", "labels", "finding")
IMAGE_KEYS = modalities.IMAGE_MODALITIES

Batch = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------
# Builders.


def get_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the tfds builder of ``data_config.name``, prepared (generated) if it was not yet.

  Args:
    data_config: with ``name`` ('synthetic_cxr/small', 'mimic_cxr/paper', or any name tfds
      knows), ``data_dir`` (None: the tfds default) and ``manual_dir`` (None: the tfds default,
      ``<data_dir>/downloads/manual``).
  """
  name = data_config.name
  data_dir = data_config.get("data_dir")
  manual_dir = data_config.get("manual_dir")
  module = builders.register(name)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError as e:
    if module is None:
      raise ValueError(
        f"No builder for dataset {name!r}: this repository's builders are "
        f"{sorted(builders.families())} (a folder input_pipeline/<name>/ with "
        "<name>_dataset_builder.py each), and tfds knows no such dataset."
      ) from e
    raise ValueError(
      f"Dataset {name!r} is not registered with tfds although {module!r} was imported: that "
      "package must import its builder class in its __init__.py."
    ) from e
  except Exception:  # e.g. a garbled dataset_info.json: say which file and how to rebuild
    integrity.check_json_files(name, data_dir)
    raise
  if builder.is_prepared():
    logging.info("Dataset %s is prepared in %s.", name, builder.data_dir)
  else:
    logging.info(
      "Preparing dataset %s in %s (manual_dir=%s); this runs once.",
      name,
      builder.data_dir,
      manual_dir,
    )
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    logging.info(
      "Prepared dataset %s: %s.",
      name,
      {split: info.num_examples for split, info in builder.info.splits.items()},
    )
  return builder


def load_vocabulary(builder: tfds.core.DatasetBuilder) -> text_lib.Vocabulary:
  """The report vocabulary stored in ``builder.info.metadata['vocabulary']``."""
  metadata = builder.info.metadata
  if metadata is None or "vocabulary" not in metadata:
    raise ValueError(
      f"Dataset {builder.info.full_name} has no vocabulary in its metadata "
      f"(metadata keys: {sorted(metadata or {})}). Its builder must set "
      "`metadata=tfds.core.MetadataDict(vocabulary=[...])` in `_info`; regenerate the dataset."
    )
  return text_lib.Vocabulary(metadata["vocabulary"])


# ------------------------------------------------------------------------------------------------
# Sizes and checks.


def _process_split(split: str, process_index: int | None, process_count: int | None):
  """The tfds split of one process and the resolved (process_index, process_count)."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count}).")
  shard = tfds.split_for_jax_process(
    split, process_index=process_index, process_count=process_count
  )
  return shard, process_index, process_count


def _is_complete(example: dict[str, tf.Tensor]) -> tf.Tensor:
  return tf.reduce_all(example["available"])


# (data_path, split) -> number of complete studies; counting reads the whole split.
_complete_counts: dict[tuple[str, str], int] = {}


def _count_complete(builder: tfds.core.DatasetBuilder, split) -> int:
  key = (str(builder.data_path), str(split))
  if key not in _complete_counts:
    ds = builder.as_dataset(
      split=split,
      decoders=tfds.decode.PartialDecoding({"available": True}),
      read_config=tfds.ReadConfig(try_autocache=False),
    )
    _complete_counts[key] = int(
      ds.filter(_is_complete).reduce(np.int64(0), lambda n, _: n + 1).numpy()
    )
    logging.info(
      "%s split %s: %d complete studies.", builder.info.full_name, split, _complete_counts[key]
    )
  return _complete_counts[key]


def num_examples(
  builder: tfds.core.DatasetBuilder, split, *, require_complete: bool = False
) -> int:
  """Number of studies in ``split`` (any tfds split: 'test', 'train[:10%]', a process shard).

  Without ``require_complete`` this is read from the dataset info (free); with it, the studies
  that have all three modalities are counted by one pass over the split's ``available`` feature
  (no image is decoded; the count is cached per split).
  """
  if not require_complete:
    return int(builder.info.splits[split].num_examples)
  return _count_complete(builder, split)


# ------------------------------------------------------------------------------------------------
# tf.data pipelines.


def _data_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def _select(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  return {k: example[k] for k in BATCH_KEYS}


def _decode_images(builder: tfds.core.DatasetBuilder):
  image_features = {k: builder.info.features[k] for k in IMAGE_KEYS}

  def decode(example):
    example = dict(example)
    for k, feature in image_features.items():
      example[k] = feature.decode_example(example[k])  # uint8 [S, S, 1]
    return example

  return decode


def _epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
  """A shuffle seed that is a function of (seed, epoch) alone."""
  return tf.random.stateless_uniform(
    [],
    seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]),
    minval=1,
    maxval=2**62,
    dtype=tf.int64,
  )


def train_iterator(
  builder: tfds.core.DatasetBuilder,
  data_config: ml_collections.ConfigDict,
  *,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[Batch]:
  """Endless, shuffled training batches of this process, from batch ``start_step`` on.

  Args:
    builder: a prepared builder (`get_builder`).
    data_config: reads ``train_split``, ``require_complete``, ``shuffle_buffer_size``,
      ``prefetch``.
    global_batch_size: rows per step over all processes; each process yields
      ``global_batch_size // process_count`` rows.
    seed: the shuffle seed; the same seed gives the same batches.
    start_step: the index of the first batch to yield. ``start_step = k`` yields exactly what a
      fresh iterator yields from its k-th batch on, without decoding the first k batches (see
      the module docstring).
    process_index, process_count: this process and how many there are (default: JAX's).

  Returns:
    An iterator of dicts of numpy arrays with keys `BATCH_KEYS`, leading dimension
    ``global_batch_size // process_count``.
  """
  shard, process_index, process_count = _process_split(
    data_config.train_split, process_index, process_count
  )
  check_batch_divisible(global_batch_size, process_count, what="processes")
  check_batch_divisible(global_batch_size, jax.device_count())
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  batch_size = global_batch_size // process_count
  require_complete = bool(data_config.require_complete)
  n = num_examples(builder, shard, require_complete=require_complete)
  steps_per_epoch = n // batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f"Process {process_index} of {process_count} has {n} training studies"
      f"{' with all three modalities' if require_complete else ''}, fewer than one batch of "
      f"{batch_size} (global batch {global_batch_size}); use a global batch of at most "
      f"{n * process_count}."
    )
  start_epoch, skip_steps = divmod(start_step, steps_per_epoch)
  shuffle_buffer_size = data_config.shuffle_buffer_size
  if shuffle_buffer_size is not None and shuffle_buffer_size < 1:
    raise ValueError(
      f"data.shuffle_buffer_size must be >= 1 or None (the whole shard), got {shuffle_buffer_size}."
    )
  shuffle_buffer_size = n if shuffle_buffer_size is None else min(n, int(shuffle_buffer_size))
  logging.info(
    "Train data, process %d/%d: %d studies, batch %d, %d steps per epoch, shuffle buffer %d; "
    "starting at step %d (epoch %d, skipping %d encoded studies).",
    process_index,
    process_count,
    n,
    batch_size,
    steps_per_epoch,
    shuffle_buffer_size,
    start_step,
    start_epoch,
    skip_steps * batch_size,
  )

  # Encoded studies of this process, in the fixed order of the files.
  studies = builder.as_dataset(
    split=shard,
    shuffle_files=False,
    decoders={k: tfds.decode.SkipDecoding() for k in IMAGE_KEYS},
    read_config=tfds.ReadConfig(try_autocache=False, options=_data_options()),
  )
  if require_complete:
    studies = studies.filter(_is_complete)
  studies = studies.map(_select)  # encoded images: string []

  def epoch(e: tf.Tensor) -> tf.data.Dataset:
    return studies.shuffle(
      shuffle_buffer_size, seed=_epoch_seed(seed, e), reshuffle_each_iteration=False
    ).take(steps_per_epoch * batch_size)

  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  ds = ds.skip(skip_steps * batch_size)  # still encoded: skipped images are never decoded
  ds = ds.map(_decode_images(builder), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(int(data_config.prefetch))
  ds = ds.with_options(_data_options())
  return ds.as_numpy_iterator()


def eval_iterator(builder: tfds.core.DatasetBuilder, *args, **kwargs) -> Iterator[Batch]:
  """One pass over `eval_dataset` (the same arguments) as numpy batches."""
  return eval_dataset(builder, *args, **kwargs).as_numpy_iterator()


def eval_dataset(
  builder: tfds.core.DatasetBuilder,
  data_config: ml_collections.ConfigDict,
  split: str,
  *,
  batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> tf.data.Dataset:
  """This process's shard of ``split`` in fixed order, in batches of equal size: each iteration
  is one pass (build it once, iterate it at every evaluation).

  Every batch has ``batch_size // process_count`` rows (``batch_size`` is the global batch, as in
  `train_iterator`; one process: exactly ``batch_size``): the last ones are padded with zeros and
  the key ``valid`` (bool [b]) is False on padding rows, so a jitted eval step compiles once.
  Every process yields the same number of batches (that of the largest shard), as a global step
  needs. With ``data_config.require_complete`` only studies with all three modalities are kept.
  `num_examples` says how many studies a split has.
  """
  shard, process_index, process_count = _process_split(split, process_index, process_count)
  check_batch_divisible(batch_size, process_count, what="processes")
  check_batch_divisible(batch_size, jax.device_count())
  local_batch_size = batch_size // process_count
  require_complete = bool(data_config.require_complete)
  shard_sizes = [
    num_examples(
      builder, _process_split(split, p, process_count)[0], require_complete=require_complete
    )
    for p in range(process_count)
  ]
  num_batches = max(math.ceil(n / local_batch_size) for n in shard_sizes)
  logging.info(
    "Eval data %s, process %d/%d: %d studies, %d batches of %d.",
    split,
    process_index,
    process_count,
    shard_sizes[process_index],
    num_batches,
    local_batch_size,
  )

  ds = builder.as_dataset(
    split=shard,
    shuffle_files=False,
    read_config=tfds.ReadConfig(try_autocache=False, options=_data_options()),
  )
  if require_complete:
    ds = ds.filter(_is_complete)
  ds = ds.map(
    lambda ex: {**_select(ex), "valid": tf.constant(True)}, num_parallel_calls=tf.data.AUTOTUNE
  )
  padding = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  ds = ds.take(num_batches * local_batch_size).batch(local_batch_size, drop_remainder=True)
  ds = ds.prefetch(int(data_config.prefetch))
  return ds.with_options(_data_options())


def selected_iterator(
  builder: tfds.core.DatasetBuilder,
  data_config: ml_collections.ConfigDict,
  split: str,
  indices: np.ndarray,
  *,
  batch_size: int,
) -> Iterator[Batch]:
  """One pass over the studies of ``split`` at positions ``indices``, on this process alone.

  Positions count the studies in the order of `eval_iterator` on one process (after the
  ``require_complete`` filter, as `num_examples`). The pass reads every record of the split but
  decodes the images of the selected studies only, so a sample of a few thousand studies of a
  60k-study split costs a read of the split's records plus the sample's decoding. Batches are
  padded like `eval_iterator`'s (``valid`` False on padding rows).

  Args:
    indices: int [n], sorted, unique, in [0, num_examples(split)).
    batch_size: rows per batch.
  """
  indices = np.asarray(indices, np.int64)
  n = num_examples(builder, split, require_complete=bool(data_config.require_complete))
  if indices.ndim != 1 or indices.size == 0:
    raise ValueError(
      f"indices must be a non-empty 1-D array of positions, got shape {indices.shape}."
    )
  if np.any(np.diff(indices) <= 0) or indices[0] < 0 or indices[-1] >= n:
    raise ValueError(
      f"indices must be sorted, unique and in [0, {n}) (the studies of split "
      f"{split!r}); got {indices.size} values in [{indices.min()}, "
      f"{indices.max()}]. Pass np.unique(indices)."
    )
  selected = np.zeros((n,), bool)
  selected[indices] = True
  selected = tf.constant(selected)
  ds = builder.as_dataset(
    split=split,
    shuffle_files=False,
    decoders={k: tfds.decode.SkipDecoding() for k in IMAGE_KEYS},
    read_config=tfds.ReadConfig(try_autocache=False, options=_data_options()),
  )
  if data_config.require_complete:
    ds = ds.filter(_is_complete)
  # One lambda per line: AutoGraph cannot tell two on one line apart, and logs a warning for each.
  ds = ds.enumerate().filter(lambda i, ex: tf.gather(selected, i))
  ds = ds.map(lambda i, ex: _select(ex))
  ds = ds.map(_decode_images(builder), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.map(lambda ex: {**ex, "valid": tf.constant(True)})
  padding = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  num_batches = math.ceil(indices.size / batch_size)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  ds = ds.take(num_batches * batch_size).batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(int(data_config.prefetch))
  ds = ds.with_options(_data_options())
  logging.info(
    "Selected data %s: %d of %d studies, %d batches of %d.",
    split,
    indices.size,
    n,
    num_batches,
    batch_size,
  )
  return ds.as_numpy_iterator()
