"""The command line that prepares a manual-download dataset (``python -m input_pipeline.<name>``).

It runs the builder's ``download_and_prepare`` without the ``tfds`` command line, which in
tensorflow-datasets 4.9.10 does not start unless apache-beam and mlcroissant are installed.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
import tensorflow_datasets as tfds

from input_pipeline.tf_import import tf


def run(builder_class, manual_dir_help: str) -> None:
  """Defines the flags --config, --manual_dir, --data_dir and prepares the dataset."""
  config = flags.DEFINE_enum(
    "config",
    builder_class.DEFAULT_CONFIG_NAME,
    [c.name for c in builder_class.BUILDER_CONFIGS],
    "Which builder config to prepare.",
  )
  manual_dir = flags.DEFINE_string("manual_dir", None, manual_dir_help, required=True)
  data_dir = flags.DEFINE_string(
    "data_dir", None, "Where the dataset is written (default: tfds's, ~/tensorflow_datasets)."
  )

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
    tf.config.set_visible_devices([], "GPU")
    builder = builder_class(
      config=config.value, data_dir=os.path.expanduser(data_dir.value) if data_dir.value else None
    )
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir.value))
    )
    logging.info(
      "%s is ready in %s (splits: %s).",
      builder.info.full_name,
      builder.data_dir,
      {name: split.num_examples for name, split in builder.info.splits.items()},
    )

  app.run(main)
