"""One process that reads the train and eval data as two processes would (for the multi-host test).

`TwoShards` wraps a data source: each batch is the concatenation of what processes 0 and 1 of
two would read (`input_pipeline.batching` shards by process), so one process with two devices
sees exactly the global batches of a two-process run. Run as a script, it trains like main.py
--mode=train on such a source:

  python tests/two_shards.py --config=configs/tiny.py --workdir=DIR [--config.x=y ...]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from input_pipeline import batching  # noqa: E402

NUM_SHARDS = 2


def _concat(iterators):
  for parts in zip(*iterators):
    yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class TwoShards:
  """A `DataSource` whose process-sharded batches are those of processes 0 and 1 of two."""

  def __init__(self, data):
    self._data = data

  def __getattr__(self, name):
    return getattr(self._data, name)

  def train_batches(self, *, global_batch_size, seed, start_step=0):
    return _concat(
      [
        batching.train_iterator(
          self._data.builder,
          self._data.config,
          global_batch_size=global_batch_size,
          seed=seed,
          start_step=start_step,
          process_index=p,
          process_count=NUM_SHARDS,
        )
        for p in range(NUM_SHARDS)
      ]
    )

  def eval_batches(self, split, *, batch_size, process_index=None, process_count=None):
    if process_index is not None:
      return self._data.eval_batches(
        split, batch_size=batch_size, process_index=process_index, process_count=process_count
      )
    return _concat(
      [
        self._data.eval_batches(
          split, batch_size=batch_size, process_index=p, process_count=NUM_SHARDS
        )
        for p in range(NUM_SHARDS)
      ]
    )


def main(argv):
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top

  from input_pipeline import tf_import, tfds_source  # pylint: disable=g-import-not-at-top
  from mopoe_jax.platform import runtime  # pylint: disable=g-import-not-at-top
  from mopoe_jax.training import loop as train

  logging.info("XLA_FLAGS=%s", runtime.apply_defaults())  # as main.py
  metric_writers = tf_import.metric_writers()  # as main.py: clu without Keras
  config = FLAGS.config
  if config.train.compilation_cache_dir:
    runtime.enable_compilation_cache(config.train.compilation_cache_dir)
  writer = metric_writers.create_default_writer(FLAGS.workdir)
  train.train_and_evaluate(config, FLAGS.workdir, TwoShards(tfds_source.load(config.data)), writer)
  writer.close()


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "Run directory.")
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  app.run(main)
