"""Cheap checks that a prepared dataset's files can be read, before anything compiles.

A damaged dataset otherwise surfaces as a TensorFlow error deep inside the input pipeline, after
minutes of compilation, without saying which file or what to do. `check_prepared` reads:
  - the JSON files tfds keeps beside the data (dataset_info.json, features.json,
    metadata.json);
  - the size of every shard: for tfrecord files, the shards of a split hold exactly the
    split's ``num_bytes`` plus 16 framing bytes per example (a truncated or overwritten shard
    has another size);
  - the first record of every shard (its checksums).
That costs a stat and one record per shard, whatever the dataset's size; damage in the middle
of a shard of unchanged size is caught by the checksums when that record is read. Every error
names the file and says how to rebuild the dataset (`rebuild_hint`).
"""

from __future__ import annotations

import json
import os
import re

from input_pipeline.tf_import import tf

_JSON_FILES = ("dataset_info.json", "features.json", "metadata.json")
_TFRECORD_FRAMING_BYTES = 16  # length (8) + length crc (4) + data crc (4)


class DatasetFileError(ValueError):
  """A file of a prepared dataset is missing or cannot be read."""


def default_data_dir(data_dir: str | None) -> str:
  """``data_dir``, or where tfds keeps datasets by default ($TFDS_DATA_DIR or
  ~/tensorflow_datasets)."""
  if data_dir:
    return os.path.expanduser(data_dir)
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def rebuild_hint(name: str, dataset_dir: str, data_dir: str | None) -> str:
  """What to run to rebuild the dataset ``name`` ('synthetic_cxr/tiny', 'mimic_cxr/paper',
  'iu_xray/paper')."""
  family = name.split("/")[0].split(":")[0]
  config = name.split("/")[1].split(":")[0] if "/" in name else None
  if family == "synthetic_cxr":
    return (
      f"Delete it (rm -r '{dataset_dir}') and rerun the same command: the synthetic "
      "dataset is generated again (seconds to minutes)."
    )
  manual_dirs = {"mimic_cxr": "/path/to/mimic-cxr-jpg/2.0.0", "iu_xray": "/path/to/iu_xray"}
  if family in manual_dirs:
    return (
      f"Delete it (rm -r '{dataset_dir}') and prepare it again: python -m "
      f"input_pipeline.{family} --config={config or 'paper'} "
      f"--manual_dir={manual_dirs[family]} --data_dir={default_data_dir(data_dir)}"
    )
  return f"Delete it (rm -r '{dataset_dir}') and prepare the dataset again."


def _error(what: str, name: str, dataset_dir: str, data_dir: str | None) -> DatasetFileError:
  return DatasetFileError(
    f"Dataset {name} in {dataset_dir} is damaged: {what}. "
    f"{rebuild_hint(name, dataset_dir, data_dir)}"
  )


def _tf_reason(error: tf.errors.OpError) -> str:
  """TensorFlow's message without the op and function decorations."""
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message).split(" [Op:")[0]
  return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def check_json_files(name: str, data_dir: str | None) -> None:
  """Raises `DatasetFileError` naming the first unreadable JSON file of ``name``'s prepared
  versions (call when tfds cannot open the builder)."""
  parts = name.split(":")[0].split("/")
  pattern = "/".join([default_data_dir(data_dir).rstrip("/"), *parts, "*"])
  for dataset_dir in sorted(tf.io.gfile.glob(pattern)):  # local or gs://
    for file_name in _JSON_FILES:
      path = f"{dataset_dir}/{file_name}"
      if not tf.io.gfile.exists(path):
        continue
      try:
        with tf.io.gfile.GFile(path) as f:
          json.load(f)
      except (ValueError, OSError, tf.errors.OpError) as e:
        raise _error(f"{path} is not valid JSON ({e})", name, dataset_dir, data_dir) from e


def check_prepared(builder, data_dir: str | None) -> None:
  """Raises `DatasetFileError` naming the file when a shard of a prepared builder is missing,
  has the wrong size or an unreadable first record."""
  name, dataset_dir = builder.info.full_name, str(builder.data_dir)
  for split_name, split in builder.info.splits.items():
    paths = [str(p) for p in split.filepaths]
    missing = [p for p in paths if not tf.io.gfile.exists(p)]
    if missing:
      raise _error(f"split {split_name!r} lacks the file(s) {missing}", name, dataset_dir, data_dir)
    if str(builder.info.file_format).lower().endswith("tfrecord") and int(split.num_bytes):
      expected = int(split.num_bytes) + _TFRECORD_FRAMING_BYTES * int(split.num_examples)
      found = sum(tf.io.gfile.stat(p).length for p in paths)
      if found != expected:
        raise _error(
          f"the {len(paths)} file(s) of split {split_name!r} ({paths}) hold {found} "
          f"bytes where dataset_info.json says {expected} (truncated or "
          "overwritten)",
          name,
          dataset_dir,
          data_dir,
        )
    for path in paths:
      try:
        for _ in tf.data.TFRecordDataset(path).take(1):
          pass
      except tf.errors.OpError as e:
        raise _error(
          f"the first record of {path} cannot be read ({_tf_reason(e)})",
          name,
          dataset_dir,
          data_dir,
        ) from e
