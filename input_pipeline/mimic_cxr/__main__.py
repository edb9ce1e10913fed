"""Builds the mimic_cxr dataset from a manual dir; run from the repository root:

  python -m input_pipeline.mimic_cxr --config=paper \
      --manual_dir=/path/to/physionet.org/files/mimic-cxr-jpg/2.0.0 \
      --data_dir=$HOME/tensorflow_datasets

The same as ``PYTHONPATH=. tfds build input_pipeline/mimic_cxr --config=paper --manual_dir=...``
without the ``tfds`` command line, which in tensorflow-datasets 4.9.10 does not start unless
apache-beam and mlcroissant are installed.
"""

import os

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline.mimic_cxr import mimic_cxr_dataset_builder

_CONFIG = flags.DEFINE_enum(
    "config", "paper", [c.name for c in mimic_cxr_dataset_builder.Builder.BUILDER_CONFIGS],
    "Which builder config to prepare.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "The directory with the MIMIC-CXR-JPG files/ tree, its CSVs and the "
    "reports (see MANUAL_DOWNLOAD_INSTRUCTIONS).", required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Where the dataset is written (default: tfds's, ~/tensorflow_datasets).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  tf.config.set_visible_devices([], "GPU")
  data_dir = os.path.expanduser(_DATA_DIR.value) if _DATA_DIR.value else None
  builder = mimic_cxr_dataset_builder.Builder(config=_CONFIG.value, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(_MANUAL_DIR.value)))
  logging.info("mimic_cxr/%s is ready in %s (splits: %s).", _CONFIG.value, builder.data_dir,
               {name: split.num_examples for name, split in builder.info.splits.items()})


if __name__ == "__main__":
  app.run(main)
